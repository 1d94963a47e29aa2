"""Launchers of the GroupNorm kernels: the work split (`plan`), strides, grids and calls.

Imported only when Triton is installed; `gnconvert.kernels.group_norm` reaches the kernels
only through these functions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .group_norm_kernels import (
    INTERPRETING,
    TUNING,
    Tuning,
    _gn_bwd_apply_kernel,
    _gn_bwd_reduce_kernel,
    _gn_bwd_single_tile_kernel,
    _gn_fwd_chunk_apply_kernel,
    _gn_fwd_chunk_stats_kernel,
    _gn_fwd_single_tile_kernel,
)

__all__ = ["INTERPRETING", "Plan", "plan", "forward", "backward_small_groups", "backward_sums", "backward_apply"]

@dataclass(frozen=True)
class Plan:
    """How one call is cut into programs."""

    n: int
    groups: int
    cpg: int
    s: int
    splits: int
    chunk: int  # spatial positions per program
    block_c: int
    single_tile: bool

    @property
    def work_bucket(self) -> int:
        """log2 of the elements one program covers: the autotuner's key."""
        return (self.cpg * self.chunk).bit_length()


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


@functools.lru_cache(maxsize=4096)
def plan(n: int, groups: int, cpg: int, s: int, device: torch.device, allow_single_tile: bool = True,
         tuning: Tuning = TUNING) -> Plan:
    """One program per group where groups are small and many; otherwise split each group over
    spatial chunks until about `programs_per_sm` programs per SM exist (batch 1 has only 32 groups)."""
    block_c = min(triton.next_power_of_2(cpg), tuning.max_block_c)
    padded = triton.next_power_of_2(cpg) * triton.next_power_of_2(s)
    few_groups = n * groups < _sm_count(device) and cpg * s >= 2 * tuning.min_chunk
    if allow_single_tile and padded <= tuning.single_tile_max and not few_groups:
        return Plan(n, groups, cpg, s, 1, s, triton.next_power_of_2(cpg), True)
    wanted = triton.cdiv(tuning.programs_per_sm * _sm_count(device), n * groups)
    most = max(1, (cpg * s) // tuning.min_chunk)
    splits = max(1, min(wanted, most))
    chunk = triton.cdiv(s, splits)
    if splits > 1:
        chunk = triton.cdiv(chunk, tuning.chunk_multiple) * tuning.chunk_multiple
    splits = triton.cdiv(s, chunk)  # no empty chunks
    return Plan(n, groups, cpg, s, splits, chunk, block_c, False)


def _plan_for(x, num_groups: int, allow_single_tile: bool = True) -> Plan:
    """`plan` for a dense (N, C, ...) x in num_groups groups."""
    n, channels = x.shape[0], x.shape[1]
    return plan(n, num_groups, channels // num_groups, x.numel() // max(n * channels, 1), x.device, allow_single_tile)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(channels: int, s: int, channels_last: bool):
    """(sn, sc, ss) of a dense (N, C, S) tensor; strides of size-1 dimensions don't matter."""
    if channels_last:
        return channels * s, 1, channels
    return channels * s, s, 1


def forward(x, weight, bias, residual, num_groups, eps, relu, channels_last, y, stats):
    """Fill y and stats (3, N, G) = (shift, mean - shift, rstd); x, residual and y are dense in one layout.

    The shift (each group's first value) keeps large-mean inputs exact: x - shift is exact
    where it matters and the mean of the differences is small."""
    p = _plan_for(x, num_groups)
    n, cpg, s = p.n, p.cpg, p.s
    sn, sc, ss = _strides(x.shape[1], s, channels_last)
    acc = _acc(x.dtype)
    w = weight if weight is not None else x
    b = bias if bias is not None else x
    r = residual if residual is not None else x
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_R=residual is not None, RELU=relu, ACC=acc)
    if p.single_tile:
        warps = 1 if INTERPRETING else (4 if cpg * s <= 2048 else 8)
        _gn_fwd_single_tile_kernel[(n * num_groups,)](
            x, y, r, w, b, stats[0], stats[1], stats[2], s, cpg, num_groups, sn, sc, ss, eps,
            BLOCK_C=triton.next_power_of_2(cpg), BLOCK_S=triton.next_power_of_2(s), num_warps=warps, **flags,
        )
        return
    parts = torch.empty((3, n * num_groups, p.splits), device=x.device, dtype=stats.dtype)
    grid = (n * num_groups, p.splits)
    _gn_fwd_chunk_stats_kernel[grid](
        x, parts[0], parts[1], parts[2], s, cpg, num_groups, p.splits, p.chunk, p.work_bucket, sn, sc, ss,
        ACC=acc, BLOCK_C=p.block_c,
    )
    _gn_fwd_chunk_apply_kernel[grid](
        x, y, r, w, b, stats[0], stats[1], stats[2], parts[0], parts[1], parts[2],
        s, cpg, num_groups, p.splits, p.chunk, p.work_bucket, sn, sc, ss, eps,
        SPLITS_P2=triton.next_power_of_2(p.splits), BLOCK_C=p.block_c, **flags,
    )


def backward_small_groups(dy, x, y, weight, stats, num_groups, relu, channels_last, dx, dres):
    """One-kernel backward where a group fits one tile: fill dx (and dres) and return the per-(N, C)
    sums of dz * xhat and dz; None where groups are too large (then use backward_sums / backward_apply)."""
    p = _plan_for(x, num_groups)
    n, cpg, s = p.n, p.cpg, p.s
    padded = triton.next_power_of_2(cpg) * triton.next_power_of_2(s)
    if not p.single_tile or padded > TUNING.single_tile_max // 2:  # x, dy, y and dx live in registers at once
        return None
    sn, sc, ss = _strides(x.shape[1], s, channels_last)
    sums = torch.empty((2, n, x.shape[1]), device=x.device, dtype=stats.dtype)
    warps = 1 if INTERPRETING else (4 if padded <= 1024 else 8)
    _gn_bwd_single_tile_kernel[(n * num_groups,)](
        x, dy, y if relu else x, weight if weight is not None else x, stats[0], stats[1], stats[2],
        sums[0], sums[1], dx, dres if dres is not None else dx, s, cpg, num_groups, sn, sc, ss,
        HAS_W=weight is not None, RELU=relu, HAS_DR=dres is not None, ACC=_acc(x.dtype),
        BLOCK_C=triton.next_power_of_2(cpg), BLOCK_S=triton.next_power_of_2(s), num_warps=warps,
    )
    return sums[0], sums[1]


def _backward_grid(x, num_groups, channels_last):
    p = _plan_for(x, num_groups, allow_single_tile=False)
    return p, (p.n * num_groups, p.splits), _strides(x.shape[1], p.s, channels_last)


def backward_sums(dy, x, y, stats, num_groups, relu, channels_last):
    """Per-(N, C) sums of dz * xhat and of dz, from which dweight, dbias and dx's group terms follow."""
    p, grid, (sn, sc, ss) = _backward_grid(x, num_groups, channels_last)
    sums = torch.empty((2, p.n, x.shape[1], p.splits), device=x.device, dtype=stats.dtype)
    _gn_bwd_reduce_kernel[grid](
        x, dy, y if relu else x, stats[0], stats[1], stats[2], sums[0], sums[1],
        p.s, p.cpg, num_groups, p.splits, p.chunk, p.work_bucket, sn, sc, ss,
        RELU=relu, ACC=_acc(x.dtype), BLOCK_C=p.block_c,
    )
    return sums.sum(-1)  # (2, N, C): the sums of dz * xhat and of dz


def backward_apply(dy, x, y, weight, stats, coef_dz, coef_dz_xhat, num_groups, relu, channels_last, dx, dres):
    """Fill dx = rstd * (w * dz - coef_dz - xhat * coef_dz_xhat), and dres = dz when given."""
    p, grid, (sn, sc, ss) = _backward_grid(x, num_groups, channels_last)
    _gn_bwd_apply_kernel[grid](
        x, dy, y if relu else x, weight if weight is not None else x, stats[0], stats[1], stats[2], coef_dz, coef_dz_xhat,
        dx, dres if dres is not None else dx,
        p.s, p.cpg, num_groups, p.splits, p.chunk, p.work_bucket, sn, sc, ss,
        HAS_W=weight is not None, RELU=relu, HAS_DR=dres is not None, ACC=_acc(x.dtype), BLOCK_C=p.block_c,
    )
