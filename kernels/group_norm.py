"""GroupNorm with fused residual add and ReLU: public function, custom op, autograd, module.

`group_norm(x, G, weight, bias, eps, residual, relu)` computes
`relu?(GN(x) * weight + bias + residual?)` in one pass over the output, with
Caffe2's GroupNorm definition (biased variance over (C/G, *spatial), eps inside
the square root), which is `torch.nn.functional.group_norm`'s.

It is the `torch.library` custom op `gnconvert::group_norm` (and
`gnconvert::group_norm_backward`), so torch.compile and torch.export see one
opaque node with a fake (meta) implementation.  The op dispatches by device
through torch.library: the Triton kernels of `group_norm_kernels` on CUDA
(PyTorch arithmetic where Triton cannot load), PyTorch arithmetic on every
other device; under TRITON_INTERPRET=1 (how CI tests the kernels) the CPU runs
the Triton kernels in Triton's interpreter.  Importing this module never imports
Triton.

`choose_backend(device)` is the one decision a model makes when it is built:
the Triton kernel (CUDA, a working Triton, not switched off with
GNCONVERT_GN_KERNEL=torch), or PyTorch's GroupNorm, with the reason.  `GroupNorm`
is the one module: an `nn.GroupNorm` that runs the op or PyTorch's kernel, as
its `kernel` attribute says.

Eager calls that need no autograd skip the dispatcher and call the device's
implementation directly; autograd, torch.compile, export and fake tensors go
through the op.  Backward is first-order only.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.errors import UsageError

KERNEL_ENV = "GNCONVERT_GN_KERNEL"
_KERNEL_CHOICES = ("triton", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton's interpreter: the kernels run on the CPU

__all__ = ["group_norm", "group_norm_torch", "choose_backend", "Backend", "GroupNorm", "GroupNormReLU", "KERNEL_ENV"]


_IMPORT_ERROR: list = []  # why the Triton kernels could not be loaded, for `choose_backend`


@functools.cache
def _kernels():
    """The Triton launch module, or None where Triton is missing or broken."""
    try:
        from . import group_norm_launch
    except Exception as e:  # ImportError, or a Triton that fails to initialise
        _IMPORT_ERROR.append(f"{type(e).__name__}: {e}")
        return None
    return group_norm_launch


@functools.cache
def _cuda_capable(index: int) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(index)[0] >= 7


def _triton_runs_on(device: torch.device) -> bool:
    if _kernels() is None:
        return False
    if device.type != "cuda":
        return _INTERPRETED and device.type == "cpu"
    return _cuda_capable(device.index if device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class Backend:
    """Which GroupNorm a model runs on a device, and why: decided once, when the model is built."""

    kernel: bool  # True: the Triton kernel, through the gnconvert::group_norm op
    reason: str

    def __str__(self) -> str:
        return f"Triton kernel ({self.reason})" if self.kernel else f"torch (F.group_norm{self.reason})"


def choose_backend(device, setting: Optional[str] = None) -> Backend:
    """The Triton kernel on CUDA where it runs, else PyTorch's GroupNorm; `setting` is GNCONVERT_GN_KERNEL's
    value ('triton', the default, or 'torch'), read from the environment when not given."""
    device = torch.device(device)
    value = (os.environ.get(KERNEL_ENV, "triton") if setting is None else setting).strip().lower() or "triton"
    if value not in _KERNEL_CHOICES:
        raise UsageError(f"{KERNEL_ENV}={value!r} is not a GroupNorm kernel; set it to 'triton' or 'torch'")
    if device.type != "cuda":
        return Backend(False, f" on {device.type}; the Triton kernel runs on CUDA")
    if value == "torch":
        return Backend(False, f": {KERNEL_ENV}=torch")
    if _kernels() is None:
        return Backend(False, f": the Triton kernel could not be loaded: {_IMPORT_ERROR[-1]}")
    if _INTERPRETED:
        return Backend(False, ": TRITON_INTERPRET=1 is set")
    if not _triton_runs_on(device):
        return Backend(False, f": {torch.cuda.get_device_name(device)} is older than compute capability 7.0")
    return Backend(True, f"gnconvert.kernels, on {torch.cuda.get_device_name(device)}")


@functools.cache
def _default_kernel(device_key: str) -> bool:
    """A `GroupNorm` built without a decision decides on its first call on each device, once."""
    return choose_backend(device_key).kernel


# --------------------------------------------------------------------------- layout helpers


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


@overload
def _dense(t: Tensor, channels_last: bool) -> Tensor: ...


@overload
def _dense(t: Optional[Tensor], channels_last: bool) -> Optional[Tensor]: ...


def _dense(t, channels_last):
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


def _group_coefficients(dz_xhat, dz, weight, num_groups, group_size):
    """mean over the group of w * dz and of w * dz * xhat, from per-(N, C) sums."""
    n = dz.shape[0]
    if weight is not None:
        w = weight.to(dz.dtype)
        dz, dz_xhat = dz * w, dz_xhat * w
    return tuple((t.reshape(n, num_groups, -1).sum(-1) / group_size).contiguous() for t in (dz, dz_xhat))


# --------------------------------------------------------------------------- custom ops


def _forward_torch(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    num_groups: int,
    eps: float,
    relu: bool,
) -> Tuple[Tensor, Tensor]:
    """(y, statistics (3, N, G): each group's shift, mean - shift and 1 / std), in PyTorch arithmetic."""
    channels_last = _is_channels_last(x)
    y, stats = _reference_forward(_dense(x, channels_last), weight, bias, _dense(residual, channels_last), num_groups,
                                  eps, relu)
    return y.contiguous(memory_format=_memory_format(channels_last)), stats


def _forward_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
                    num_groups: int, eps: float, relu: bool) -> Tuple[Tensor, Tensor]:
    """The same from the Triton kernels, where they run (else PyTorch arithmetic: no Triton, an old GPU)."""
    if x.numel() == 0 or not _triton_runs_on(x.device):
        return _forward_torch(x, weight, bias, residual, num_groups, eps, relu)
    channels_last = _is_channels_last(x)
    x = _dense(x, channels_last)
    y = torch.empty_like(x, memory_format=_memory_format(channels_last))
    stats = x.new_empty((3, x.shape[0], num_groups), dtype=_stat_dtype(x.dtype))
    _kernels().forward(x, None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
                       _dense(residual, channels_last), num_groups, eps, relu, channels_last, y, stats)
    return y, stats


def _backward_torch(grad_y: Tensor, x: Tensor, y: Optional[Tensor], weight: Optional[Tensor], stats: Tensor,
                    num_groups: int, relu: bool, residual_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, sum of dz * xhat per channel, sum of dz per channel, dresidual or an empty tensor)."""
    channels_last = _is_channels_last(x)
    x, dy = _dense(x, channels_last), _dense(grad_y, channels_last)
    y = _dense(y, channels_last) if relu else None
    n = x.shape[0]
    dz, xhat = _reference_dz_xhat(dy, x, y, stats, num_groups, relu)
    sum_dz_xhat, sum_dz = (dz * xhat).sum(-1), dz.sum(-1)
    coef_dz, coef_dz_xhat = _group_coefficients(sum_dz_xhat, sum_dz, weight, num_groups, _group_size(x, num_groups))
    w_dz = (dz * weight.to(dz.dtype)[:, None] if weight is not None else dz).reshape(n, num_groups, -1)
    dx = stats[2][..., None] * (w_dz - coef_dz[..., None] - xhat.reshape(n, num_groups, -1) * coef_dz_xhat[..., None])
    dres = dz.reshape(x.shape).to(x.dtype) if residual_grad else x.new_empty(0)
    return dx.reshape(x.shape).to(x.dtype), sum_dz_xhat.sum(0), sum_dz.sum(0), dres


def _backward_triton(grad_y: Tensor, x: Tensor, y: Optional[Tensor], weight: Optional[Tensor], stats: Tensor,
                     num_groups: int, relu: bool, residual_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if x.numel() == 0 or not _triton_runs_on(x.device):
        return _backward_torch(grad_y, x, y, weight, stats, num_groups, relu, residual_grad)
    channels_last = _is_channels_last(x)
    x, dy = _dense(x, channels_last), _dense(grad_y, channels_last)
    y = _dense(y, channels_last) if relu else None
    weight = None if weight is None else weight.contiguous()
    k = _kernels()
    dx = torch.empty_like(x, memory_format=_memory_format(channels_last))
    dres = torch.empty_like(dx) if residual_grad else None
    sums = k.backward_small_groups(dy, x, y, weight, stats, num_groups, relu, channels_last, dx, dres)
    if sums is None:
        sums = k.backward_sums(dy, x, y, stats, num_groups, relu, channels_last)
        coefs = _group_coefficients(sums[0], sums[1], weight, num_groups, _group_size(x, num_groups))
        k.backward_apply(dy, x, y, weight, stats, *coefs, num_groups, relu, channels_last, dx, dres)
    dz_xhat, dz = sums
    return dx, dz_xhat.sum(0), dz.sum(0), dres if dres is not None else x.new_empty(0)


def _group_size(x: Tensor, num_groups: int) -> int:
    return x.numel() // max(x.shape[0] * num_groups, 1)


# device type -> (forward, backward): Triton on CUDA (on the CPU too in Triton's interpreter), PyTorch elsewhere
_IMPLEMENTATIONS: Dict[str, Tuple[Callable, Callable]] = {
    "cuda": (_forward_triton, _backward_triton), **({"cpu": (_forward_triton, _backward_triton)} if _INTERPRETED else {})}

_group_norm_op = torch.library.custom_op("gnconvert::group_norm", mutates_args=())(_forward_torch)
_group_norm_backward_op = torch.library.custom_op("gnconvert::group_norm_backward", mutates_args=())(_backward_torch)
for _device_type, (_fwd, _bwd) in _IMPLEMENTATIONS.items():
    _group_norm_op.register_kernel(_device_type)(_fwd)
    _group_norm_backward_op.register_kernel(_device_type)(_bwd)


@_group_norm_op.register_fake
def _group_norm_fake(x, weight, bias, residual, num_groups, eps, relu):
    y = torch.empty_like(x, memory_format=_memory_format(_is_channels_last(x)))
    return y, x.new_empty((3, x.shape[0], num_groups), dtype=_stat_dtype(x.dtype))


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
        return _IMPLEMENTATIONS.get(x.device.type, (_forward_torch, _backward_torch))[0](*args)[0]
    return torch.ops.gnconvert.group_norm(*args)[0]


def _plain_eager_call(*tensors: Optional[Tensor]) -> bool:
    """Inference in eager mode skips the dispatcher (tens of microseconds a call, ~70 calls an image);
    autograd, torch.compile / export, tracing and tensor subclasses (fake tensors) go through the op."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:
        if t is None:
            continue
        if (type(t) is not Tensor and type(t) is not nn.Parameter) or (t.requires_grad and torch.is_grad_enabled()):
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
    """The same result from PyTorch's own kernels (F.group_norm, + residual, ReLU): what the exact model
    runs on the CPU, the fallback and the benchmark's baseline.  The add and ReLU work in place on
    F.group_norm's fresh output (one pass less over memory; its backward needs only x)."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


@torch.jit.unused
def _kernel_call(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                 residual: Optional[Tensor], relu: bool, kernel: Optional[bool]) -> Optional[Tensor]:
    """The op, when this module runs the kernel on x's device (decided at build, or once per device)."""
    use = _default_kernel(str(x.device)) if kernel is None else kernel
    return group_norm(x, num_groups, weight, bias, eps, residual, relu) if use else None


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same constructor, same `weight` / `bias` state-dict keys) with a residual added and
    an optional ReLU in the same pass: the model's GroupNorm and a drop-in for anyone's.

    kernel: True runs the gnconvert::group_norm op (the Triton kernel on CUDA), False PyTorch's
    GroupNorm; None (a drop-in's default) decides on the first call on each device (`choose_backend`).
    A model built by gnconvert sets it from its runtime.  TorchScript always runs PyTorch's kernel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, relu: bool = False, kernel: Optional[bool] = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.relu = relu
        self.kernel = kernel

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, relu: Optional[bool] = None) -> Tensor:
        relu_ = self.relu if relu is None else relu
        if not torch.jit.is_scripting():
            y = _kernel_call(x, self.num_groups, self.weight, self.bias, self.eps, residual, relu_, self.kernel)
            if y is not None:
                return y
        return group_norm_torch(x, self.num_groups, self.weight, self.bias, self.eps, residual, relu_)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


class GroupNormReLU(GroupNorm):
    """GroupNorm followed by ReLU (after the optional residual), fused."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, kernel: Optional[bool] = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, relu=True, kernel=kernel)
