"""`Runtime`: where and how a model runs, decided once when it is built.

The device, the run mode (exact fp32, or a fast mode the device can run at a gain), the
GroupNorm backend with its reason, and the numerics each network part runs under.  Every
report prints `describe()`; nothing here changes process-wide state except through the TF32
gate of `numerics`, which restores what it found.

    >>> rt = Runtime.resolve("auto", precision="fp32")      # one-line errors for what cannot run
    >>> model = build_model(ckpt, runtime=rt)               # gnconvert.api
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import torch

from gnconvert.kernels.group_norm import Backend, choose_backend
from gnconvert.runtime import numerics
from gnconvert.runtime.device import resolve_device
from gnconvert.runtime.mode import EXACT, Precision, RunMode

__all__ = ["Runtime", "RunMode", "Precision", "EXACT", "resolve_device"]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    mode: RunMode = EXACT
    group_norm: Backend = field(default_factory=lambda: choose_backend("cpu", "torch"))
    warnings: Tuple[str, ...] = ()  # why an allowed slow mode is slow (allow_slow=True)

    @classmethod
    def resolve(cls, device: Union[str, torch.device, None] = "auto", precision: Union[str, RunMode] = "fp32",
                compile: bool = False, allow_slow: bool = False, group_norm: Optional[str] = None) -> Runtime:
        """Check everything before any work: the device exists, the mode runs on it (and faster than the
        exact one, unless allow_slow), and which GroupNorm will run (GNCONVERT_GN_KERNEL, read here,
        unless `group_norm` is 'triton' or 'torch')."""
        dev = resolve_device(device)
        mode = precision if isinstance(precision, RunMode) else RunMode.of(precision, compile)
        warnings = tuple(mode.check(dev, allow_slow))
        return cls(dev, mode, choose_backend(dev, group_norm), warnings)

    def numerics(self) -> contextlib.AbstractContextManager:
        """What a network part runs under: float32 (TF32 off on CUDA), TF32, or bfloat16 autocast."""
        if self.mode.precision == Precision.TF32:
            return numerics.tf32(True)
        if self.mode.precision == Precision.BF16:
            stack = contextlib.ExitStack()
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            stack.enter_context(numerics.exact_fp32())
            return stack
        return numerics.exact_fp32()

    def describe(self) -> Dict[str, object]:
        """The runtime as every report records it."""
        return {"device": str(self.device), "mode": self.mode.to_dict(), "group_norm": str(self.group_norm)}
