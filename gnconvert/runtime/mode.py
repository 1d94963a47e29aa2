"""How the network runs: the exact mode (fp32 eager, TF32 off: Detectron's numerics, the default)
or an opt-in fast one (bf16 autocast with channels_last, tf32 on CUDA, torch.compile).  A fast mode
changes only the three network parts; proposals, RoIAlign, NMS, decoding and the paste stay the exact
float32 code.  Its fidelity is measured, not promised, and every report names it.  A mode the device
cannot run, or would run slower than the exact one (gnconvert.runtime.cpu), is refused before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch

from gnconvert.architecture.record import Choice
from gnconvert.errors import UsageError


class Precision(Choice):
    FP32 = "fp32"  # exact: Detectron's numerics
    BF16 = "bf16"  # bfloat16 convolutions and matmuls, float32 statistics and post-processing
    TF32 = "tf32"  # CUDA: TF32 tensor cores for float32 convolutions and matmuls


PRECISIONS = tuple(p.value for p in Precision)


@dataclass(frozen=True)
class RunMode:
    precision: Precision = Precision.FP32
    compiled: bool = False

    @classmethod
    def of(cls, precision: str = "fp32", compile: bool = False) -> RunMode:
        if str(precision) not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        return cls(Precision(str(precision)), bool(compile))

    @property
    def exact(self) -> bool:
        return self.precision == Precision.FP32 and not self.compiled

    @property
    def name(self) -> str:
        """'fp32', 'bf16', 'fp32+compile', ...: how reports and file names spell it."""
        return f"{self.precision}{'+compile' if self.compiled else ''}"

    def describe(self) -> str:
        how = "compiled" if self.compiled else "eager"
        if self.exact:
            return "fp32 eager (exact: Detectron's numerics)"
        return f"{self.precision} {how} (fast mode: not Detectron's exact numerics)"

    def to_dict(self) -> Dict[str, object]:
        return {"precision": str(self.precision), "compile": self.compiled, "exact": self.exact,
                "name": self.name}

    def check(self, device: torch.device, allow_slow: bool = False) -> List[str]:
        """A clear error for a mode the device cannot run, or would run slower than the exact one
        (unless allow_slow), before any work; returns the warnings to show for an allowed slow mode."""
        if self.precision == Precision.TF32 and device.type != "cuda":
            raise UsageError("precision tf32 runs on CUDA tensor cores only; use --precision bf16 for a fast "
                             "CPU mode, or fp32")
        if self.precision == Precision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision "
                             "fp32 or tf32")
        if device.type != "cpu":
            return []
        from gnconvert.runtime import cpu

        slow = []
        compile_possible, compile_faster, compile_why = cpu.compile_support() if self.compiled else (True, True, "")
        if not compile_possible:
            raise UsageError(f"{compile_why}; install g++ (or clang++), or run without --compile")
        if not compile_faster:
            slow.append(f"{compile_why}: --compile cannot beat eager on this CPU")
        if self.precision == Precision.BF16:
            has_bf16, why = cpu.bf16_instructions()
            if not has_bf16:
                slow.append(f"{why}: bf16 would run about {cpu.BF16_SLOWDOWN_SEEN:.0f}x slower than fp32")
        if slow and not allow_slow:
            instead = "fp32 (the exact default)"
            if self.precision == Precision.BF16 and not self.compiled and cpu.compile_support()[1]:
                instead += " or fp32 with --compile"
            raise UsageError(f"{'; '.join(slow)}; use {instead}, or pass --allow-slow to run {self.name} anyway")
        return [f"running {self.name} although {s}" for s in slow]


EXACT = RunMode()
