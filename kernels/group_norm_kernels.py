"""Triton kernels for GroupNorm (+ residual + ReLU), forward and backward.

Imported only when Triton is installed (see `gnconvert.kernels.group_norm`); it holds
the `@triton.jit` kernels; `group_norm_launch` sizes their grids and calls them.

A tensor is seen as (N, C, S) with strides (sn, sc, ss), S the flattened
spatial size, so one set of kernels serves contiguous NCHW (ss == 1), channels
last (sc == 1, ss == C) and 2-D / 3-D inputs.  One program works on one
(sample, group, spatial chunk) and walks it in [BLOCK_C, BLOCK_S] tiles.

Two forward paths:

* small groups (the RoI heads, 2-D inputs): one program holds a whole group in
  registers, so x is read once and the variance is an exact two-pass in registers;
* large groups (the body and FPN at batch 1 hold 32 groups of up to 1e6
  values): the group is cut into spatial chunks so that enough programs exist
  to fill the GPU.  A first kernel writes per-chunk (count, mean, M2), merged
  with Chan's parallel formula, which never forms E[x^2] - E[x]^2 and so stays
  exact for large-mean inputs; a second kernel merges the chunks of its group
  and normalises its own chunk in the same pass as the affine, residual and ReLU.

Statistics are float32 (float64 for float64 inputs, which gradcheck uses);
inputs and outputs keep their dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Tuning:
    """Sizes that decide the forward path and the split; smaller under the interpreter so tests reach every loop."""

    single_tile_max: int  # padded elements of a group that one program holds in registers
    max_block_c: int  # channels per tile
    min_chunk: int  # elements per program before splitting further is not worth it
    programs_per_sm: int
    chunk_multiple: int  # spatial chunks start at multiples of this, so Triton can prove 16-byte alignment


GPU_TUNING = Tuning(single_tile_max=8192, max_block_c=64, min_chunk=2048, programs_per_sm=4, chunk_multiple=64)
INTERPRETER_TUNING = Tuning(single_tile_max=256, max_block_c=4, min_chunk=64, programs_per_sm=16, chunk_multiple=1)
TUNING = INTERPRETER_TUNING if INTERPRETING else GPU_TUNING


def _tile_configs():
    if INTERPRETING:  # one config: the autotuner then runs nothing extra
        return [triton.Config({"TILE": 64}, num_warps=1)]
    return [
        triton.Config({"TILE": tile}, num_warps=warps)
        for tile in (1024, 2048, 4096)
        for warps in (4, 8)
    ]


def _block_s(args):
    return max(args["TILE"] // args["BLOCK_C"], 1)


def _quick_bench(kernel_call, quantiles):
    """Short timings for the autotuner: ~70 call sites must not cost a minute on the first image."""
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _tuned(fn):
    """Autotune the tile size per (work per program rounded to a power of two, channels per group),
    so that a new image size reuses the tuning of a similar one instead of benchmarking again;
    results are kept in Triton's on-disk cache for the next process."""
    return triton.autotune(
        configs=_tile_configs(), key=["WORK_BUCKET", "CPG", "BLOCK_C"], do_bench=_quick_bench, cache_results=True
    )(
        triton.heuristics({"BLOCK_S": _block_s})(fn)
    )


# --------------------------------------------------------------------------- forward


@triton.jit
def _group_start(G, CPG, stride_n, stride_c):
    """This program's pid = n * G + g, its group g, and the offset of the group's first element."""
    pid = tl.program_id(0)
    g = pid % G
    return pid, g, (pid // G).to(tl.int64) * stride_n + (g * CPG).to(tl.int64) * stride_c


@triton.jit
def _chunk(CHUNK, S, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """This program's chunk k (program axis 1), its spatial range [s_begin, s_end), and a tile's channel
    and spatial index ranges."""
    k = tl.program_id(1)
    s_begin = k * CHUNK
    return k, s_begin, tl.minimum(s_begin + CHUNK, S), tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_S)


@triton.jit
def _load_stats(SHIFT, MEAN, RSTD, pid):
    """The group's statistics, as the forward stored them."""
    return tl.load(SHIFT + pid), tl.load(MEAN + pid), tl.load(RSTD + pid)


@triton.jit
def _dz_xhat(X, DY, Y, offs, mask, shift, mean, rstd, RELU: tl.constexpr, ACC: tl.constexpr):
    """dz = dy where the ReLU passed (y > 0), and xhat = ((x - shift) - mean) * rstd, at offs."""
    dz = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.load(Y + offs, mask=mask, other=0.0).to(ACC)
        dz = tl.where(y > 0.0, dz, 0.0)
    return dz, ((tl.load(X + offs, mask=mask, other=0.0).to(ACC) - shift) - mean) * rstd


@triton.jit
def _gn_fwd_single_tile_kernel(
    X, Y, R, W, B, SHIFT, MEAN, RSTD,
    S, CPG, G, stride_n, stride_c, stride_s, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    c = tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    c_ok = c < CPG
    mask = c_ok[:, None] & (s < S)[None, :]
    offs = base + c[:, None] * stride_c + s[None, :] * stride_s

    shift = tl.load(X + base).to(ACC)
    x = tl.where(mask, tl.load(X + offs, mask=mask, other=0.0).to(ACC) - shift, 0.0)
    count = tl.sum(mask.to(ACC))  # not CPG * S: Triton turns an int argument equal to 1 into a constant
    mean = tl.sum(x) / count
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred) / count
    rstd = tl.math.rsqrt(var + eps)
    tl.store(SHIFT + pid, shift)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)

    scale = tl.full([BLOCK_C], 1.0, ACC) * rstd
    if HAS_W:
        scale = scale * tl.load(W + g * CPG + c, mask=c_ok, other=0.0).to(ACC)
    y = centred * scale[:, None]
    if HAS_B:
        y = y + tl.load(B + g * CPG + c, mask=c_ok, other=0.0).to(ACC)[:, None]
    if HAS_R:
        y = y + tl.load(R + offs, mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # keeps NaN, as torch.relu does
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@_tuned
@triton.jit
def _gn_fwd_chunk_stats_kernel(
    X, P_COUNT, P_MEAN, P_M2,
    S, CPG, G, SPLITS, CHUNK, WORK_BUCKET, stride_n, stride_c, stride_s,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILE: tl.constexpr,
):
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    k, s_begin, s_end, cr, sr = _chunk(CHUNK, S, BLOCK_C, BLOCK_S)

    shift = tl.load(X + base).to(ACC)
    count = tl.zeros([], ACC)
    mean = tl.zeros([], ACC)
    m2 = tl.zeros([], ACC)
    for c0 in range(0, CPG, BLOCK_C):
        c = c0 + cr
        c_ok = c < CPG
        for s0 in range(s_begin, s_end, BLOCK_S):
            s = s0 + sr
            mask = c_ok[:, None] & (s < s_end)[None, :]
            x = tl.load(X + base + c[:, None] * stride_c + s[None, :] * stride_s, mask=mask, other=0.0).to(ACC)
            x = tl.where(mask, x - shift, 0.0)
            # Tile statistics, then Chan's merge into the running ones.
            t_count = tl.sum(mask.to(ACC))
            t_mean = tl.sum(x) / t_count
            d = tl.where(mask, x - t_mean, 0.0)
            t_m2 = tl.sum(d * d)
            delta = t_mean - mean
            total = count + t_count
            mean = mean + delta * (t_count / total)
            m2 = m2 + t_m2 + delta * delta * (count * t_count / total)
            count = total
    slot = pid * SPLITS + k
    tl.store(P_COUNT + slot, count)
    tl.store(P_MEAN + slot, mean)
    tl.store(P_M2 + slot, m2)


@_tuned
@triton.jit
def _gn_fwd_chunk_apply_kernel(
    X, Y, R, W, B, SHIFT, MEAN, RSTD, P_COUNT, P_MEAN, P_M2,
    S, CPG, G, SPLITS, CHUNK, WORK_BUCKET, stride_n, stride_c, stride_s, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, SPLITS_P2: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILE: tl.constexpr,
):
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    k, s_begin, s_end, cr, sr = _chunk(CHUNK, S, BLOCK_C, BLOCK_S)

    # Merge the group's chunk statistics (Chan), every program of the group alike.
    kk = tl.arange(0, SPLITS_P2)
    k_ok = kk < SPLITS
    p_count = tl.load(P_COUNT + pid * SPLITS + kk, mask=k_ok, other=0.0)
    p_mean = tl.load(P_MEAN + pid * SPLITS + kk, mask=k_ok, other=0.0)
    p_m2 = tl.load(P_M2 + pid * SPLITS + kk, mask=k_ok, other=0.0)
    count = tl.sum(p_count)
    mean = tl.sum(p_count * p_mean) / count
    dev = p_mean - mean
    m2 = tl.sum(tl.where(k_ok, p_m2 + p_count * dev * dev, 0.0))
    rstd = tl.math.rsqrt(m2 / count + eps)
    shift = tl.load(X + base).to(ACC)
    if k == 0:
        tl.store(SHIFT + pid, shift)
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)

    for c0 in range(0, CPG, BLOCK_C):
        c = c0 + cr
        c_ok = c < CPG
        scale = tl.full([BLOCK_C], 1.0, ACC) * rstd
        if HAS_W:
            scale = scale * tl.load(W + g * CPG + c, mask=c_ok, other=0.0).to(ACC)
        offset = tl.zeros([BLOCK_C], ACC)
        if HAS_B:
            offset = tl.load(B + g * CPG + c, mask=c_ok, other=0.0).to(ACC)
        for s0 in range(s_begin, s_end, BLOCK_S):
            s = s0 + sr
            mask = c_ok[:, None] & (s < s_end)[None, :]
            offs = base + c[:, None] * stride_c + s[None, :] * stride_s
            x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
            y = ((x - shift) - mean) * scale[:, None] + offset[:, None]
            if HAS_R:
                y = y + tl.load(R + offs, mask=mask, other=0.0).to(ACC)
            if RELU:
                y = tl.where(y < 0.0, 0.0, y)
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- backward
#
# With z = xhat * w + b (+ r), y = relu?(z), dz = dy * [y > 0]:
#   dw[c] = sum_{n,s} dz * xhat,  db[c] = sum_{n,s} dz,  dr = dz,
#   dx = rstd * (w * dz - mean_g(w * dz) - xhat * mean_g(w * dz * xhat)).
# Every group sum is a sum of per-(n, c) sums, so one reduction kernel writes
# per-(n, c, chunk) sums of dz * xhat and dz; torch folds those tiny arrays
# into dw, db and the two group coefficients; the apply kernel writes dx.


@_tuned
@triton.jit
def _gn_bwd_reduce_kernel(
    X, DY, Y, SHIFT, MEAN, RSTD, P_DZ_XHAT, P_DZ,
    S, CPG, G, SPLITS, CHUNK, WORK_BUCKET, stride_n, stride_c, stride_s,
    RELU: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILE: tl.constexpr,
):
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    k, s_begin, s_end, cr, sr = _chunk(CHUNK, S, BLOCK_C, BLOCK_S)
    shift, mean, rstd = _load_stats(SHIFT, MEAN, RSTD, pid)
    for c0 in range(0, CPG, BLOCK_C):
        c = c0 + cr
        c_ok = c < CPG
        acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_S], ACC)
        acc_dz = tl.zeros([BLOCK_C, BLOCK_S], ACC)
        for s0 in range(s_begin, s_end, BLOCK_S):
            s = s0 + sr
            mask = c_ok[:, None] & (s < s_end)[None, :]
            offs = base + c[:, None] * stride_c + s[None, :] * stride_s
            dz, xhat = _dz_xhat(X, DY, Y, offs, mask, shift, mean, rstd, RELU, ACC)
            acc_dz_xhat += tl.where(mask, dz * xhat, 0.0)
            acc_dz += dz
        slot = (pid * CPG + c) * SPLITS + k  # == (n * C + channel) * SPLITS + k
        tl.store(P_DZ_XHAT + slot, tl.sum(acc_dz_xhat, 1), mask=c_ok)
        tl.store(P_DZ + slot, tl.sum(acc_dz, 1), mask=c_ok)


@_tuned
@triton.jit
def _gn_bwd_apply_kernel(
    X, DY, Y, W, SHIFT, MEAN, RSTD, COEF_DZ, COEF_DZ_XHAT, DX, DR,
    S, CPG, G, SPLITS, CHUNK, WORK_BUCKET, stride_n, stride_c, stride_s,
    HAS_W: tl.constexpr, RELU: tl.constexpr, HAS_DR: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILE: tl.constexpr,
):
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    k, s_begin, s_end, cr, sr = _chunk(CHUNK, S, BLOCK_C, BLOCK_S)
    shift, mean, rstd = _load_stats(SHIFT, MEAN, RSTD, pid)
    coef_dz = tl.load(COEF_DZ + pid)
    coef_dz_xhat = tl.load(COEF_DZ_XHAT + pid)
    for c0 in range(0, CPG, BLOCK_C):
        c = c0 + cr
        c_ok = c < CPG
        w = tl.full([BLOCK_C], 1.0, ACC)
        if HAS_W:
            w = tl.load(W + g * CPG + c, mask=c_ok, other=0.0).to(ACC)
        for s0 in range(s_begin, s_end, BLOCK_S):
            s = s0 + sr
            mask = c_ok[:, None] & (s < s_end)[None, :]
            offs = base + c[:, None] * stride_c + s[None, :] * stride_s
            dz, xhat = _dz_xhat(X, DY, Y, offs, mask, shift, mean, rstd, RELU, ACC)
            dx = rstd * (w[:, None] * dz - coef_dz - xhat * coef_dz_xhat)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DR:
                tl.store(DR + offs, dz.to(DR.dtype.element_ty), mask=mask)


@triton.jit
def _gn_bwd_single_tile_kernel(
    X, DY, Y, W, SHIFT, MEAN, RSTD, SUM_DZ_XHAT, SUM_DZ, DX, DR,
    S, CPG, G, stride_n, stride_c, stride_s,
    HAS_W: tl.constexpr, RELU: tl.constexpr, HAS_DR: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Small groups: the whole backward of one group in one program, one read of x, dy (and y)."""
    pid, g, base = _group_start(G, CPG, stride_n, stride_c)
    shift, mean, rstd = _load_stats(SHIFT, MEAN, RSTD, pid)
    c = tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    c_ok = c < CPG
    mask = c_ok[:, None] & (s < S)[None, :]
    offs = base + c[:, None] * stride_c + s[None, :] * stride_s

    dz, xhat = _dz_xhat(X, DY, Y, offs, mask, shift, mean, rstd, RELU, ACC)
    xhat = tl.where(mask, xhat, 0.0)
    sum_dz_xhat = tl.sum(dz * xhat, 1)
    sum_dz = tl.sum(dz, 1)
    tl.store(SUM_DZ_XHAT + pid * CPG + c, sum_dz_xhat, mask=c_ok)  # == n * C + channel
    tl.store(SUM_DZ + pid * CPG + c, sum_dz, mask=c_ok)

    w = tl.where(c_ok, 1.0, 0.0).to(ACC)
    if HAS_W:
        w = tl.load(W + g * CPG + c, mask=c_ok, other=0.0).to(ACC)
    count = tl.sum(mask.to(ACC))
    coef_dz = tl.sum(w * sum_dz) / count
    coef_dz_xhat = tl.sum(w * sum_dz_xhat) / count
    dx = rstd * (w[:, None] * dz - coef_dz - xhat * coef_dz_xhat)
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_DR:
        tl.store(DR + offs, dz.to(DR.dtype.element_ty), mask=mask)
