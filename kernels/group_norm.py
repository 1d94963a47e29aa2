"""GroupNorm with fused residual add and ReLU: public function, custom op, autograd, module.

`group_norm(x, G, weight, bias, eps, residual, relu)` computes
`relu?(GN(x) * weight + bias + residual?)` in one pass over the output, with
Caffe2's GroupNorm definition (biased variance over (C/G, *spatial), eps inside
the square root), which is `torch.nn.functional.group_norm`'s.

It is the `torch.library` custom op `gnconvert::group_norm` (and
`gnconvert::group_norm_backward`), so torch.compile and torch.export see one
opaque node with a fake (meta) implementation.  The op runs the Triton kernels of
`gnconvert.kernels.group_norm_kernels` on CUDA (and on the CPU under TRITON_INTERPRET=1,
which is how CI tests them) and plain torch arithmetic elsewhere, so it never
fails for want of Triton.  Importing this module never imports Triton.

`is_available(device)` says whether the model should call it: CUDA, a working
Triton, and not switched off with GNCONVERT_GN_KERNEL=torch.

Eager calls that need no autograd skip the dispatcher and call the same
implementation directly; autograd, torch.compile, export and fake tensors go
through the op.  Backward is first-order only.
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.errors import UsageError

KERNEL_ENV = "GNCONVERT_GN_KERNEL"
_KERNEL_CHOICES = ("triton", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = ["group_norm", "group_norm_torch", "is_available", "GroupNorm", "GroupNormReLU", "KERNEL_ENV"]


_IMPORT_ERROR: list = []  # why the Triton kernels could not be loaded, for `backend`


@functools.cache
def _kernels():
    """The Triton kernel module, or None where Triton is missing or broken."""
    try:
        from gnconvert.kernels import group_norm_launch
    except Exception as e:  # ImportError, or a Triton that fails to initialise
        _IMPORT_ERROR.append(f"{type(e).__name__}: {e}")
        return None
    return group_norm_launch


@functools.cache
def _cuda_capable(index: int) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(index)[0] >= 7


def _triton_runs_on(device: torch.device) -> bool:
    k = _kernels()
    if k is None:
        return False
    if k.INTERPRETING:
        return device.type in ("cpu", "cuda")
    return device.type == "cuda" and _cuda_capable(device.index if device.index is not None else torch.cuda.current_device())


def kernel_choice() -> str:
    """GNCONVERT_GN_KERNEL: 'triton' (default) or 'torch' (PyTorch's own GroupNorm)."""
    value = os.environ.get(KERNEL_ENV, "triton").strip().lower() or "triton"
    if value not in _KERNEL_CHOICES:
        raise UsageError(f"{KERNEL_ENV}={value!r} is not a GroupNorm kernel; set it to 'triton' or 'torch'")
    return value


def _why_torch(device: torch.device) -> Optional[str]:
    """Why PyTorch's GroupNorm runs on `device` (the rest of backend()'s sentence), or None when the
    Triton kernel does: the one decision both backend() and is_available() report."""
    if device.type != "cuda":
        return f" on {device.type}; the Triton kernel runs on CUDA"
    if kernel_choice() == "torch":
        return f": {KERNEL_ENV}=torch"
    k = _kernels()
    if k is None:
        return f": the Triton kernel could not be loaded: {_IMPORT_ERROR[-1]}"
    if k.INTERPRETING:
        return ": TRITON_INTERPRET=1 is set"
    if not _triton_runs_on(device):
        return f": {torch.cuda.get_device_name(device)} is older than compute capability 7.0"
    return None


def backend(device) -> str:
    """Which GroupNorm the model runs on `device`, and why: never a silent fallback."""
    device = torch.device(device)
    why = _why_torch(device)
    if why is not None:
        return f"torch (F.group_norm{why})"
    return f"Triton kernel (gnconvert.kernels, on {torch.cuda.get_device_name(device)})"


def is_available(device) -> bool:
    """True only on CUDA with a working Triton (compiled, not interpreted) and the kernel not switched off."""
    device = torch.device(device)
    return device.type == "cuda" and _why_torch(device) is None  # called per layer: CPU answers at once


# --------------------------------------------------------------------------- layout helpers


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def _dense(t: Optional[Tensor], channels_last: bool) -> Optional[Tensor]:
    return None if t is None else t.contiguous(memory_format=_memory_format(channels_last))


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- torch arithmetic (no Triton)


def _reference_forward(x, weight, bias, residual, num_groups, eps, relu):
    """The op's arithmetic in torch: statistics (3, N, G) as the kernels write them."""
    n, channels = x.shape[:2]
    acc = _stat_dtype(x.dtype)
    grouped = x.to(acc).reshape(n, num_groups, -1)
    shift = grouped[..., 0]
    var, mean = torch.var_mean(grouped - shift[..., None], dim=-1, correction=0)
    rstd = torch.rsqrt(var + eps)
    y = (((grouped - shift[..., None]) - mean[..., None]) * rstd[..., None]).reshape(n, channels, -1)
    if weight is not None:
        y = y * weight.to(acc)[:, None]
    if bias is not None:
        y = y + bias.to(acc)[:, None]
    if residual is not None:
        y = y + residual.to(acc).reshape(n, channels, -1)
    if relu:
        y = torch.relu(y)
    return y.reshape(x.shape).to(x.dtype), torch.stack([shift, mean, rstd])


def _reference_dz_xhat(dy, x, y, stats, num_groups, relu):
    """dz = dy masked by the ReLU, and xhat, both (N, C, S) in the statistics dtype."""
    n, channels = x.shape[:2]
    shift, mean, rstd = (s[..., None] for s in stats)
    dz = dy.to(stats.dtype)
    if relu:
        dz = torch.where(y > 0, dz, torch.zeros((), dtype=dz.dtype, device=dz.device))
    xhat = ((x.to(stats.dtype).reshape(n, num_groups, -1) - shift) - mean) * rstd
    return dz.reshape(n, channels, -1), xhat.reshape(n, channels, -1)


def _reference_backward_sums(dy, x, y, stats, num_groups, relu):
    dz, xhat = _reference_dz_xhat(dy, x, y, stats, num_groups, relu)
    return (dz * xhat).sum(-1), dz.sum(-1)


def _reference_backward_apply(dy, x, y, weight, stats, coef_dz, coef_dz_xhat, num_groups, relu):
    n = x.shape[0]
    dz, xhat = _reference_dz_xhat(dy, x, y, stats, num_groups, relu)
    w_dz = dz * weight.to(dz.dtype)[:, None] if weight is not None else dz
    w_dz, xhat = w_dz.reshape(n, num_groups, -1), xhat.reshape(n, num_groups, -1)
    dx = stats[2][..., None] * (w_dz - coef_dz[..., None] - xhat * coef_dz_xhat[..., None])
    return dx.reshape(x.shape), dz.reshape(x.shape)


def _group_coefficients(dz_xhat, dz, weight, num_groups, group_size):
    """mean over the group of w * dz and of w * dz * xhat, from per-(N, C) sums."""
    n = dz.shape[0]
    if weight is not None:
        w = weight.to(dz.dtype)
        dz, dz_xhat = dz * w, dz_xhat * w
    coef_dz = dz.reshape(n, num_groups, -1).sum(-1) / group_size
    coef_dz_xhat = dz_xhat.reshape(n, num_groups, -1).sum(-1) / group_size
    return coef_dz.contiguous(), coef_dz_xhat.contiguous()


# --------------------------------------------------------------------------- custom ops


def _group_norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    num_groups: int,
    eps: float,
    relu: bool,
) -> Tuple[Tensor, Tensor]:
    """(y, statistics (3, N, G): each group's shift, mean - shift and 1 / std)."""
    channels_last = _is_channels_last(x)
    x = _dense(x, channels_last)
    residual = _dense(residual, channels_last)
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    if x.numel() == 0 or not _triton_runs_on(x.device):
        y, stats = _reference_forward(x, weight, bias, residual, num_groups, eps, relu)
        return y.contiguous(memory_format=_memory_format(channels_last)), stats
    y = torch.empty_like(x, memory_format=_memory_format(channels_last))
    stats = x.new_empty((3, x.shape[0], num_groups), dtype=_stat_dtype(x.dtype))
    _kernels().forward(x, weight, bias, residual, num_groups, eps, relu, channels_last, y, stats)
    return y, stats


_group_norm_op = torch.library.custom_op("gnconvert::group_norm", mutates_args=())(_group_norm_forward)


@_group_norm_op.register_fake
def _group_norm_fake(x, weight, bias, residual, num_groups, eps, relu):
    y = torch.empty_like(x, memory_format=_memory_format(_is_channels_last(x)))
    return y, x.new_empty((3, x.shape[0], num_groups), dtype=_stat_dtype(x.dtype))


@torch.library.custom_op("gnconvert::group_norm_backward", mutates_args=())
def _group_norm_backward_op(
    grad_y: Tensor,
    x: Tensor,
    y: Optional[Tensor],
    weight: Optional[Tensor],
    stats: Tensor,
    num_groups: int,
    relu: bool,
    residual_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, sum of dz * xhat per channel, sum of dz per channel, dresidual or an empty tensor)."""
    channels_last = _is_channels_last(x)
    x = _dense(x, channels_last)
    dy = _dense(grad_y, channels_last)
    y = _dense(y, channels_last) if relu else None
    weight = None if weight is None else weight.contiguous()
    n, channels = x.shape[:2]
    group_size = x.numel() // max(n * num_groups, 1)
    if x.numel() > 0 and _triton_runs_on(x.device):
        k = _kernels()
        dx = torch.empty_like(x, memory_format=_memory_format(channels_last))
        dres = torch.empty_like(dx) if residual_grad else None
        sums = k.backward_small_groups(dy, x, y, weight, stats, num_groups, relu, channels_last, dx, dres)
        if sums is None:
            sums = k.backward_sums(dy, x, y, stats, num_groups, relu, channels_last)
            coefs = _group_coefficients(*sums, weight, num_groups, group_size)
            k.backward_apply(dy, x, y, weight, stats, *coefs, num_groups, relu, channels_last, dx, dres)
        dz_xhat, dz = sums
    else:
        dz_xhat, dz = _reference_backward_sums(dy, x, y, stats, num_groups, relu)
        coef_dz, coef_dz_xhat = _group_coefficients(dz_xhat, dz, weight, num_groups, group_size)
        dx, dres = _reference_backward_apply(dy, x, y, weight, stats, coef_dz, coef_dz_xhat, num_groups, relu)
        dx = dx.to(x.dtype)
        dres = dres.to(x.dtype) if residual_grad else None
    return dx, dz_xhat.sum(0), dz.sum(0), dres if dres is not None else x.new_empty(0)


@_group_norm_backward_op.register_fake
def _group_norm_backward_fake(grad_y, x, y, weight, stats, num_groups, relu, residual_grad):
    dx = torch.empty_like(x, memory_format=_memory_format(_is_channels_last(x)))
    per_channel = stats.new_empty((x.shape[1],))
    dres = torch.empty_like(dx) if residual_grad else x.new_empty(0)
    return dx, per_channel, torch.empty_like(per_channel), dres


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, num_groups, eps, relu = inputs
    y, stats = output
    ctx.save_for_backward(x, weight, y if relu else None, stats)
    ctx.num_groups, ctx.relu = num_groups, relu
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.mark_non_differentiable(stats)


def _backward(ctx, grad_y, _grad_stats):
    x, weight, y, stats = ctx.saved_tensors
    residual_grad = ctx.residual_dtype is not None and ctx.needs_input_grad[3]
    dx, dweight, dbias, dres = torch.ops.gnconvert.group_norm_backward(
        grad_y, x, y, weight, stats, ctx.num_groups, ctx.relu, residual_grad
    )
    return (
        dx if ctx.needs_input_grad[0] else None,
        dweight.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None,
        dbias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None,
        dres.to(ctx.residual_dtype) if residual_grad else None,
        None,
        None,
        None,
    )


_group_norm_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API


def _check(x, num_groups, weight, bias, residual) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise UsageError(f"group_norm input must be a tensor of shape (N, C, ...), got {getattr(x, 'shape', type(x))}; "
                         "add the batch dimension")
    if x.dtype not in _FLOAT_DTYPES:
        raise UsageError(f"group_norm input has dtype {x.dtype}; convert it to float32, float16 or bfloat16")
    channels = x.shape[1]
    if num_groups <= 0 or channels % num_groups:
        raise UsageError(f"group_norm: {channels} channels cannot be split into {num_groups} groups; pick a divisor of {channels}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (channels,) or p.device != x.device):
            raise UsageError(f"group_norm {name} has shape {tuple(p.shape)} on {p.device}; it must be ({channels},) on {x.device}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device):
        raise UsageError(
            f"group_norm residual is {tuple(residual.shape)} {residual.dtype} on {residual.device}; "
            f"it must match the input, {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if x.shape[0] and x.numel() // x.shape[0] >= 2**31:
        raise UsageError(f"group_norm: one sample of {tuple(x.shape)} has 2**31 elements or more; split the batch differently")


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    residual: Optional[Tensor] = None,
    relu: bool = False,
) -> Tensor:
    """relu?(GroupNorm(x) * weight + bias + residual?), one fused pass; output in x's dtype and layout."""
    _check(x, num_groups, weight, bias, residual)
    args = (x, weight, bias, residual, int(num_groups), float(eps), bool(relu))
    if _plain_eager_call(x, weight, bias, residual):
        return _group_norm_forward(*args)[0]
    return torch.ops.gnconvert.group_norm(*args)[0]


def _plain_eager_call(*tensors: Optional[Tensor]) -> bool:
    """Inference in eager mode skips the dispatcher (tens of microseconds a call, ~70 calls an image);
    autograd, torch.compile / export, tracing and tensor subclasses (fake tensors) go through the op."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:
        if t is None:
            continue
        if type(t) is not Tensor and type(t) is not nn.Parameter:
            return False
        if t.requires_grad and torch.is_grad_enabled():
            return False
    return True


def group_norm_torch(
    x: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    residual: Optional[Tensor] = None,
    relu: bool = False,
) -> Tensor:
    """The same result from PyTorch's own kernels: the fallback and the benchmark's baseline."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same constructor, same `weight` / `bias` state-dict keys) that uses the fused
    Triton kernel where `is_available`, with an optional fused ReLU and a residual added before it."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, relu: bool = False) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.relu = relu

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        fn = group_norm if is_available(x.device) else group_norm_torch
        return fn(x, self.num_groups, self.weight, self.bias, self.eps, residual, self.relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


class GroupNormReLU(GroupNorm):
    """GroupNorm followed by ReLU (after the optional residual), fused."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, relu=True)
