"""The per-channel normalisations of Detectron's models, with fused residual + ReLU.

Every norm here has the same call, `norm(x, residual=None, relu=...)`, computing
`relu?(norm(x) + residual?)`, so a bottleneck can end in one fused GroupNorm +
residual + ReLU pass and the modules around them need not care which norm they hold:

- `GroupNorm` (gnconvert.kernels): Caffe2's GroupNorm (= `F.group_norm`); the Triton
  kernel where the model's runtime chose it (`set_group_norm_kernel`), else PyTorch's.
- `AffineChannel`: frozen BN as Detectron runs it, `y = x * weight[c] + bias[c]`.
- `NoNorm`: for convs that carry a bias instead (the BN* FPN and heads).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gnconvert.architecture import AFFINE, GN, Norm
from gnconvert.kernels.group_norm import GroupNorm

NONE = Norm.NONE


def set_group_norm_kernel(module: nn.Module, kernel: bool) -> None:
    """Every GroupNorm of `module` runs the Triton kernel (True) or PyTorch's GroupNorm (False): the
    runtime's choice, made once when the model is built."""
    for m in module.modules():
        if isinstance(m, GroupNorm):
            m.kernel = kernel


def _finish(y: Tensor, residual: Optional[Tensor], relu: bool) -> Tensor:
    """+ residual, then ReLU, in place: `y` is a fresh tensor of ours (one pass less over memory)."""
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


class AffineChannel(nn.Module):
    """Detectron's frozen BN: a per-channel scale and shift, no statistics, no eps."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
        # in x's dtype: under bf16 autocast, float32 parameters would promote the whole map
        y = x * self.weight.to(x.dtype).view(1, -1, 1, 1) + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return _finish(y, residual, relu)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}"


class NoNorm(nn.Module):
    """No normalisation (the conv has a bias); keeps the norms' call for residual and ReLU."""

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
        return _finish(x.clone() if (residual is not None or relu) else x, residual, relu)  # x is the caller's


def make_norm(kind: str, num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> nn.Module:
    """GN -> GroupNorm, AFFINE -> AffineChannel, "none" -> NoNorm."""
    if kind == GN:
        return GroupNorm(num_groups, num_channels, eps, kernel=False)
    if kind == AFFINE:
        return AffineChannel(num_channels)
    if kind == NONE:
        return NoNorm()
    raise ValueError(f"unknown norm {kind!r}")


class ConvNorm(nn.Module):
    """conv -> norm (-> + residual) (-> ReLU); the conv has a bias only when there is no norm.

    Children `conv` and `norm` give the state-dict keys `*.conv.weight`,
    `*.conv.bias` (no norm) and `*.norm.{weight,bias}`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, norm: str = GN,
                 num_groups: int = 32, eps: float = 1e-5, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=norm == NONE)
        self.norm = make_norm(norm, out_channels, num_groups, eps)
        self.relu = relu

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return self.norm(self.conv(x), residual, self.relu)

