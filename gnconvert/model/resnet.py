"""Detectron's ResNet body (modeling/ResNet.py) in its two flavours.

- GN (04_2018): every conv, the projection shortcut included, is followed by
  GroupNorm; the stride of a stage's first block sits on the 3x3 (STRIDE_1X1 False).
- BN* (12_2017, MSRA weights): frozen BN as AffineChannel; the stride sits on the
  first 1x1 (STRIDE_1X1 True).

Block 0 of every stage, res2's included, has a projection shortcut; res3..res5
halve the resolution in their first block.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import Architecture
from gnconvert.model.norm import ConvNorm, make_norm


class Stem(nn.Module):
    """conv1 7x7/2 -> norm -> ReLU -> max-pool 3x3/2 (pad 1)."""

    def __init__(self, norm: str, num_groups: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.norm = make_norm(norm, 64, num_groups, eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x), None, True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with norms, summed with the shortcut, then ReLU.

    The last norm, the residual sum and the ReLU are one call (one fused kernel on CUDA).
    """

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int, stride_in_1x1: bool,
                 norm: str, num_groups: int, eps: float):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, inner_channels, 1, stride=stride_1x1, bias=False)
        self.norm1 = make_norm(norm, inner_channels, num_groups, eps)
        self.conv2 = nn.Conv2d(inner_channels, inner_channels, 3, stride=stride_3x3, padding=1, bias=False)
        self.norm2 = make_norm(norm, inner_channels, num_groups, eps)
        self.conv3 = nn.Conv2d(inner_channels, out_channels, 1, bias=False)
        self.norm3 = make_norm(norm, out_channels, num_groups, eps)
        if in_channels != out_channels:
            self.shortcut: nn.Module = ConvNorm(in_channels, out_channels, 1, stride, norm, num_groups, eps)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(self.conv1(x), None, True)
        y = self.norm2(self.conv2(y), None, True)
        return self.norm3(self.conv3(y), self.shortcut(x), True)


class ResNetBody(nn.Module):
    """Stem and res2..res5; returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        kw: Dict[str, Any] = dict(stride_in_1x1=arch.stride_in_1x1, norm=arch.norm, num_groups=arch.gn_groups,
                                  eps=arch.gn_eps)
        self.stem = Stem(arch.norm, arch.gn_groups, arch.gn_eps)
        in_channels = 64
        for spec in arch.stages:
            layers = []
            for k in range(spec.blocks):
                stride = 2 if k == 0 and spec.index > 2 else 1
                layers.append(Bottleneck(in_channels, spec.inner, spec.out, stride, **kw))
                in_channels = spec.out
            self.add_module(spec.name, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        res2 = self.res2(x)
        res3 = self.res3(res2)
        res4 = self.res4(res3)
        res5 = self.res5(res4)
        return [res2, res3, res4, res5]
