"""The three network parts of a Detector (body + FPN + RPN head, box head, mask head), run in its
runtime's mode; their outputs come back float32 in the standard layout, so the exact
post-processing after them is the same in every mode.

The network is prepared once, when the model is built for its mode: channels_last and float32
score layers for bf16 (declared attributes of our own modules, `model.float32`), nothing for the
exact mode.  Compiled parts are `torch.compile` (inductor, freezing); the heads' RoI and detection
counts are symbolic from the start, and body + FPN + RPN head get a static graph per input size.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from gnconvert.model.network import MaskRCNNNetwork
from gnconvert.model.roi_heads import BoxOutputs
from gnconvert.runtime.mode import Precision

# Body + FPN + RPN head on the CPU, 800x1216 / 800x800 / 1088x800 inputs, fp32: eager 1.67 / 1.00 /
# 1.46 s; compiled static 1.38 / 0.81 / 1.11 s (1.21-1.31x, ~30-40 s to compile each size); compiled
# with symbolic sizes 1.62 / 0.99 / 1.38 s (1.0-1.06x: inductor pre-packs oneDNN convolutions only
# for static shapes).  A symbolic graph costs a compile and gains nothing, so each new input size
# gets its own static graph until this many are held; later sizes run eager.  Detectron's resize
# (short side 800, long side <= 1333, padded to 32) gives a handful of common sizes on COCO.
COMPILED_IMAGE_SIZES = 8


def _float32(t: Tensor) -> Tensor:
    return t.to(torch.float32, memory_format=torch.contiguous_format)


class NetworkParts:
    """How a Detector's network parts run; `runtime` is a gnconvert.runtime.Runtime."""

    def __init__(self, network: MaskRCNNNetwork, runtime):
        mode = runtime.mode
        self.runtime = runtime
        self.channels_last = mode.precision == Precision.BF16
        if self.channels_last:
            # the image-level part only: on the heads' many 7x7 and 14x14 maps, PyTorch's CPU
            # GroupNorm is ~6x slower channels_last than contiguous (measured, bf16)
            for part in (network.body, network.fpn, network.rpn_head):
                part.to(memory_format=torch.channels_last)
            network.rpn_head.float32_outputs = network.box_predictor.float32_outputs = True
        self._network = network  # uncompiled, for image sizes past the static graphs
        parts: Dict[str, Callable] = {"image_level": network, "box": BoxOutputs(network), "mask": network.mask_head}
        self.max_static_sizes = COMPILED_IMAGE_SIZES if mode.compiled else 0
        self._static_sizes: set = set()
        if mode.compiled:
            # freezing: weights become constants (folded, pre-packed for oneDNN on the CPU)
            parts = {k: torch.compile(m, options={"freezing": True}, dynamic=False if k == "image_level" else None)
                     for k, m in parts.items()}
        self._parts = parts

    @property
    def compiled_sizes(self) -> List[Tuple[int, ...]]:
        """The input sizes the body + FPN + RPN head has static compiled graphs for."""
        return sorted(self._static_sizes)

    def _call(self, part: Callable, *args):
        if not self.runtime.mode.compiled:
            with self.runtime.numerics():
                return part(*args)
        # dynamo keeps at most `recompile_limit` graphs per function, counted over every compiled network of
        # the process, then runs it eager with a warning: room for this network's static sizes, for this call
        import torch._dynamo

        name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        room = max(getattr(torch._dynamo.config, name), 4 * self.max_static_sizes + 8)
        with torch._dynamo.config.patch(**{name: room}), self.runtime.numerics():
            return part(*args)

    def image_level(self, data: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        if self.channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        part = self._parts["image_level"]
        if self.runtime.mode.compiled:
            size = tuple(data.shape[2:])
            if size not in self._static_sizes:
                if len(self._static_sizes) >= self.max_static_sizes:
                    part = self._network
                else:
                    self._static_sizes.add(size)
        feats, logits, deltas = self._call(part, data)
        if self.runtime.mode.exact:
            return feats, logits, deltas
        return [_float32(t) for t in feats], [_float32(t) for t in logits], [_float32(t) for t in deltas]

    def rpn_head(self, feats: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """The RPN head alone on given FPN maps (the parity noise floor's perturbed ones), eager."""
        with self.runtime.numerics():
            return self._network.rpn_head(feats)

    def box(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.runtime.mode.compiled:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        cls_score, bbox_pred = self._call(self._parts["box"], x)
        return _float32(cls_score), _float32(bbox_pred)

    def mask(self, x: Tensor) -> Tensor:
        if self.runtime.mode.compiled:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return _float32(self._call(self._parts["mask"], x))
