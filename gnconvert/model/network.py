"""MaskRCNNNetwork: the learned layers of a Detectron FPN Mask R-CNN, nothing else.

Detectron's test-time pipeline (resizing, anchors, proposals, RoIAlign level
mapping, box and mask post-processing) lives in `gnconvert.inference` and calls
these children one by one; `forward` runs the image-level half that is the same
for every image (body, FPN, RPN head), which is also what gets exported.
"""
from __future__ import annotations

from typing import List, Tuple

from torch import Tensor, nn

from gnconvert.architecture import Architecture, Kind
from gnconvert.model.fpn import FPN
from gnconvert.model.resnet import ResNetBody
from gnconvert.model.roi_heads import BoxPredictor, MaskHead, build_box_head
from gnconvert.model.rpn import RPNHead


class MaskRCNNNetwork(nn.Module):
    __jit_unused_properties__ = ["bf16_prepared"]

    def __init__(self, arch: Architecture):
        super().__init__()
        if arch.kind != Kind.MASK_RCNN:
            raise ValueError(f"MaskRCNNNetwork needs a mask_rcnn architecture, not {arch.kind!r}")
        self.body = ResNetBody(arch)
        self.fpn = FPN(arch)
        self.rpn_head = RPNHead(arch)
        self.box_head = build_box_head(arch)
        self.box_predictor = BoxPredictor(arch)
        self.mask_head = MaskHead(arch)

    @property
    def bf16_prepared(self) -> bool:
        """Set up for the bf16 fast mode (gnconvert.runtime.network_parts): not the exact model."""
        return bool(self.rpn_head.float32_outputs)

    def features(self, images: Tensor) -> List[Tensor]:
        """[N, 3, H, W] (H, W multiples of 32) -> [P2, P3, P4, P5, P6]."""
        return self.fpn(self.body(images))

    def forward(self, images: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """-> (P2..P6, per-level objectness logits [N, A, H, W], per-level deltas [N, 4A, H, W])."""
        features = self.features(images)
        logits, deltas = self.rpn_head(features)
        return features, logits, deltas
