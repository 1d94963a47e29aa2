"""Detectron's FPN (modeling/FPN.py) on top of res2..res5.

Top-down: P5's inner map is a 1x1 lateral of res5; each finer inner map is its
1x1 lateral (normalised first, with GN) plus the coarser inner map upsampled x2
by nearest neighbour.  A 3x3 conv on each inner map gives P2..P5, and P6 is P5
subsampled by 2 (Detectron's 1x1 max-pool of stride 2).  No ReLU anywhere.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import Architecture
from gnconvert.model.norm import ConvNorm


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """Output pixel (y, x) = input pixel (y // 2, x // 2), like Caffe2's UpsampleNearest."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class FPN(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        kw: Dict[str, Any] = dict(norm=arch.fpn_norm, num_groups=arch.gn_groups, eps=arch.gn_eps)
        dim = arch.fpn_dim
        for level, spec in zip(range(2, 6), arch.stages):  # lateral2..5, then output2..5: the state dict's order
            self.add_module(f"lateral{level}", ConvNorm(spec.out, dim, 1, **kw))
        for level in range(2, 6):
            self.add_module(f"output{level}", ConvNorm(dim, dim, 3, **kw))

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        """[res2, res3, res4, res5] -> [P2, P3, P4, P5, P6]."""
        inner5 = self.lateral5(feats[3])
        inner4 = self.lateral4(feats[2], upsample_nearest_2x(inner5))
        inner3 = self.lateral3(feats[1], upsample_nearest_2x(inner4))
        inner2 = self.lateral2(feats[0], upsample_nearest_2x(inner3))
        p5 = self.output5(inner5)
        p6 = p5[:, :, ::2, ::2]
        return [self.output2(inner2), self.output3(inner3), self.output4(inner4), p5, p6]
