"""How the network runs: the exact mode (the default and the promise) and the opt-in fast ones.

fp32 eager keeps every tensor float32 and TF32 off on CUDA; it is what reproduces Detectron.
A fast mode changes only how the three network parts compute (body + FPN + RPN head, box head,
mask head); what lies between them (proposals, RoIAlign, NMS, box decoding, the mask paste)
stays the exact float32 code, fed with the parts' outputs cast back to float32:

    precision bf16   autocast to bfloat16 (CPU and CUDA), channels_last; GroupNorm statistics
                     in float32 (the Triton kernel on CUDA, PyTorch's mixed-precision kernel on CPU)
    precision tf32   CUDA only: float32 tensors, convolutions and matmuls on TF32 tensor cores
    compile          torch.compile (inductor) with freezing; the heads with symbolic RoI counts,
                     body + FPN + RPN head static for each of the first COMPILED_IMAGE_SIZES input
                     sizes and eager for further ones; compiled code cached under the gnconvert
                     cache folder

A fast mode's results are not Detectron's bit for bit; its fidelity is measured
(`gnconvert selftest --precision bf16`, scripts/bench_fast_modes.py) and every report says
which mode produced it.
"""
from __future__ import annotations

import contextlib
import os
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn

from gnconvert.architecture.record import Choice
from gnconvert.errors import UsageError
from gnconvert.model.roi_heads import BoxOutputs

if TYPE_CHECKING:
    from gnconvert.model.network import MaskRCNNNetwork


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

    def check_device(self, device: torch.device) -> None:
        """A clear error for a mode the device cannot run, before any work."""
        if self.precision == Precision.TF32 and device.type != "cuda":
            raise UsageError("precision tf32 runs on CUDA tensor cores only; use --precision bf16 for a fast "
                             "CPU mode, or fp32")
        if self.precision == Precision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision "
                             "fp32 or tf32")


EXACT = RunMode()


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    """cuDNN convolutions and CUDA matmuls on TF32 tensor cores, or not, restored on exit."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def exact_fp32() -> contextlib.AbstractContextManager:
    """float32 convolutions and matmuls as float32, not TF32 (PyTorch lets cuDNN use TF32 by
    default, which moves CUDA results by ~1e-3 before GroupNorm is even reached)."""
    return _tf32(False)


def compiled_cache_dir() -> str:
    """Where inductor keeps compiled code between processes: the gnconvert cache folder, unless
    the user already chose one with TORCHINDUCTOR_CACHE_DIR."""
    from gnconvert.zoo.cache import cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return chosen
    folder = str(cache_dir() / "compiled")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def _float32_forward(self: nn.Module, x: Tensor) -> Tensor:
    """A layer's own forward, in float32 even inside a bfloat16 autocast region."""
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float())


def _float32(t: Tensor) -> Tensor:
    return t.to(torch.float32, memory_format=torch.contiguous_format)


# Body + FPN + RPN head on the CPU, 800x1216 / 800x800 / 1088x800 inputs, fp32: eager 1.67 / 1.00 /
# 1.46 s; compiled static 1.38 / 0.81 / 1.11 s (1.21-1.31x, ~30-40 s to compile each size); compiled
# with symbolic sizes 1.62 / 0.99 / 1.38 s (1.0-1.06x: inductor pre-packs oneDNN convolutions only
# for static shapes).  A symbolic graph costs a compile and gains nothing, so each new input size
# gets its own static graph until this many are held; later sizes run eager.  Detectron's resize
# (short side 800, long side <= 1333, padded to 32) gives a handful of common sizes on COCO.
COMPILED_IMAGE_SIZES = 8


class FastNetwork:
    """A Detector's three network parts run in a fast mode; their outputs come back float32 and
    in the standard layout, so the exact post-processing after them is unchanged."""

    def __init__(self, network: MaskRCNNNetwork, mode: RunMode, device: torch.device):
        self.mode = mode
        self.device_type = device.type
        network.fast_mode = mode.name  # type: ignore[assignment]  # layers change below: exports refuse it
        self.channels_last = mode.precision == Precision.BF16
        if mode.precision == Precision.BF16:
            # the image-level part only: on the heads' many 7x7 and 14x14 maps, PyTorch's CPU
            # GroupNorm is ~6x slower channels_last than contiguous (measured, bf16)
            for part in (network.body, network.fpn, network.rpn_head):
                part.to(memory_format=torch.channels_last)
            # the layers that give scores and box deltas: float32 keeps their resolution (and the
            # RPN's scores free of bfloat16's ties, which slow the exact sorts) for <1% of the work
            for layer in (network.rpn_head.cls_logits, network.rpn_head.bbox_pred, network.box_predictor.cls_score,
                          network.box_predictor.bbox_pred):
                layer.forward = types.MethodType(_float32_forward, layer)  # type: ignore[method-assign]
        parts: Dict[str, nn.Module] = {"image_level": network, "box": BoxOutputs(network),
                                       "mask": network.mask_head}  # type: ignore[dict-item]
        self._static_sizes: set = set()
        self.max_static_sizes = COMPILED_IMAGE_SIZES if mode.compiled else 0
        if mode.compiled:
            compiled_cache_dir()
            _allow_recompiles(self.max_static_sizes)
            # freezing: weights become constants (folded, pre-packed for oneDNN on the CPU).  The heads'
            # RoI and detection counts are symbolic from the first call (no cost measured); image
            # sizes stay static (see COMPILED_IMAGE_SIZES)
            parts = {k: _compiled(m, static=k == "image_level") for k, m in parts.items()}
        self._network = network  # uncompiled, for image sizes past the static graphs
        self._parts = parts

    @property
    def compiled_sizes(self) -> List[Tuple[int, ...]]:
        """The input sizes the body + FPN + RPN head has static compiled graphs for."""
        return sorted(self._static_sizes)

    def _image_level_for(self, data: Tensor) -> nn.Module:
        if not self.mode.compiled:
            return self._parts["image_level"]
        size = tuple(data.shape[2:])
        if size not in self._static_sizes:
            if len(self._static_sizes) >= self.max_static_sizes:
                return self._network
            self._static_sizes.add(size)
        return self._parts["image_level"]

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        if self.mode.precision == Precision.BF16:
            with torch.autocast(self.device_type, dtype=torch.bfloat16), exact_fp32():
                yield
        elif self.mode.precision == Precision.TF32:
            with _tf32(True):
                yield
        else:
            with exact_fp32():
                yield

    def image_level(self, data: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        if self.channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        part = self._image_level_for(data)
        with self._numerics():
            feats, logits, deltas = part(data)
        return [_float32(t) for t in feats], [_float32(t) for t in logits], [_float32(t) for t in deltas]

    def _vary(self, t: Tensor, *dims: int) -> None:
        if self.mode.compiled:
            torch._dynamo.maybe_mark_dynamic(t, list(dims))

    def box(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        self._vary(x, 0)
        with self._numerics():
            cls_score, bbox_pred = self._parts["box"](x)
        return _float32(cls_score), _float32(bbox_pred)

    def mask(self, x: Tensor) -> Tensor:
        self._vary(x, 0)
        with self._numerics():
            logits = self._parts["mask"](x)
        return _float32(logits)


def _compiled(module: nn.Module, static: bool) -> nn.Module:
    return torch.compile(module, options={"freezing": True}, dynamic=False if static else None)  # type: ignore[return-value]


_static_graphs_reserved = 0


def _allow_recompiles(graphs: int) -> None:
    """dynamo keeps at most `recompile_limit` graphs per function, counted over every compiled
    network of the process (they share their modules' forward code), and then runs it eager with a
    warning: make room for each compiled network's static image sizes."""
    import torch._dynamo

    global _static_graphs_reserved
    _static_graphs_reserved += graphs
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < _static_graphs_reserved:
        setattr(config, name, _static_graphs_reserved)
