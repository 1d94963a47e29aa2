"""The per-channel normalisations of Detectron's models, with fused residual + ReLU.

Every norm here has the same call, `norm(x, residual=None, relu=False)`, computing
`relu?(norm(x) + residual?)`, so a bottleneck can end in one fused GroupNorm +
residual + ReLU pass and the modules around them need not care which norm they hold:

- `GroupNorm`: Caffe2's GroupNorm (= `F.group_norm`).  On CUDA it runs the fused
  Triton kernel of `gnconvert.kernels.group_norm` unless GNCONVERT_GN_KERNEL=torch.
- `AffineChannel`: frozen BN as Detectron runs it, `y = x * weight[c] + bias[c]`.
- `NoNorm`: for convs that carry a bias instead (the BN* FPN and heads).
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import AFFINE, GN, Norm

NONE = Norm.NONE


_KERNEL_IMPORT_ERROR: list = []


@functools.cache
def _fused_kernel_module():
    """The module `gnconvert.kernels.group_norm` (the package re-exports a function of that name)."""
    try:
        return importlib.import_module("gnconvert.kernels.group_norm")
    except ImportError as e:
        _KERNEL_IMPORT_ERROR.append(f"{type(e).__name__}: {e}")
        return None


def group_norm_backend(device) -> str:
    """Which GroupNorm a GN model runs on `device`: the fused Triton kernel, or PyTorch's and why."""
    fused = _fused_kernel_module()
    if fused is None:
        return f"torch (F.group_norm: gnconvert.kernels could not be imported: {_KERNEL_IMPORT_ERROR[-1]})"
    return fused.backend(device)


def _use_fused_kernel(x: Tensor) -> bool:
    if not x.is_cuda:
        return False
    fused = _fused_kernel_module()
    return fused is not None and fused.is_available(x.device)


@torch.jit.unused
def _fused_group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                      residual: Optional[Tensor], relu: bool) -> Tensor:
    return _fused_kernel_module().group_norm(x, num_groups, weight, bias, eps, residual, relu)


def _finish(y: Tensor, residual: Optional[Tensor], relu: bool, inplace: bool = True) -> Tensor:
    """+ residual, then ReLU; in place when `y` is a fresh tensor of ours (one pass less over memory)."""
    if not inplace:
        y = y.clone() if (residual is not None or relu) else y
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
               residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """relu?(GroupNorm(x) * weight + bias + residual?): the fused kernel where it runs, else PyTorch's."""
    if not torch.jit.is_scripting():
        if _use_fused_kernel(x):
            return _fused_group_norm(x, num_groups, weight, bias, eps, residual, relu)
    return _finish(F.group_norm(x, num_groups, weight, bias, eps), residual, relu)


class GroupNorm(nn.Module):
    """Caffe2 GroupNorm: biased variance over (C/G, H, W), eps inside the square root."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, residual, relu)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.weight.shape[0]}, eps={self.eps}"


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
        return _finish(x, residual, relu, inplace=False)  # x is the caller's tensor


def make_norm(kind: str, num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> nn.Module:
    """GN -> GroupNorm, AFFINE -> AffineChannel, "none" -> NoNorm."""
    if kind == GN:
        return GroupNorm(num_groups, num_channels, eps)
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
