"""`cv2.resize(..., INTER_LINEAR)` on float32 images, in plain torch ops.

A TorchScript artifact cannot call OpenCV, yet Detectron's input is OpenCV's
resize (`cv2.resize(im, None, fx=s, fy=s)`) and so is its mask paste
(`cv2.resize(probs, (w, h))`).  The opencv-python wheels run these through Intel
IPP, and so did the run that made Detectron's golden outputs (their `data_crop`
equals IPP's result bit for bit, not OpenCV's own C++ path).  What IPP computes,
worked out against `cv2.resize` itself (see tests/test_cv2_resize.py):

- output size cvRound(size * factor) (half to even) when a factor is given;
- blend a + (b - a) * w with one rounding (a fused multiply-add), rows first, then
  columns, w the float32-rounded fraction of a float64 source coordinate (0 left
  of the first pixel);
- when output / input sizes equal the factors (always for a `dsize`; for `fx/fy`
  when both axes' sizes scale exactly): coordinate (d + 0.5) * scale - 0.5 with
  scale = input / output, and past the last pixel the last pixel itself;
- otherwise: coordinate (d + 0.5 - 0.5 * f) / f for the factor f, and past the
  last pixel the last two pixels extrapolated with w = 1 (a + (b - a)).

Bit-exact on the 5 golden images, on every mask-paste size tried and on random
images of many shapes.  F.interpolate is not used: it computes coordinates and
weights in float32 and blends four taps at once.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from gnconvert.inference.exportable import exporting


def round_half_even(x: float) -> int:
    """cvRound / numpy's round: nearest integer, ties to even."""
    r = math.floor(x + 0.5)
    if r - x == 0.5 and r % 2 == 1:
        r -= 1
    return int(r)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 a * b + c rounded once (the float32 product is exact in float64); in place, one
    float64 temporary (three times faster than the plain expression on large images)."""
    out = a.to(torch.float64)
    out.mul_(b.to(torch.float64))
    out.add_(c)
    return out.to(torch.float32)


def _taps(dst: int, src: int, scale: float, exact_ratio: bool,
          device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """First source index, second source index and float32 weight of each output pixel.

    scale: input / output size when `exact_ratio`, else the factor output / input.
    """
    d = torch.arange(dst, dtype=torch.float64, device=device)
    if exact_ratio:
        pos = (d + 0.5) * scale - 0.5
    else:  # a true division on every device (CUDA multiplies by the reciprocal of a number divisor)
        pos = (d + 0.5 - 0.5 * scale) / torch.full_like(d, scale)
    return _taps_at(pos, src, exact_ratio or src < 2)


def _taps_at(pos: Tensor, src: int, last_pixel: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Taps for float64 source coordinates: 0 left of the first pixel; past the last pixel, the
    last pixel itself (`last_pixel`) or the last two extrapolated with weight 1."""
    first = torch.floor(pos)
    weight = pos - first
    index = first.to(torch.int64)
    weight = torch.where(index < 0, torch.zeros_like(weight), weight)
    index = index.clamp(min=0)
    beyond = index >= src - 1
    weight = torch.where(beyond, torch.zeros_like(weight) if last_pixel else torch.ones_like(weight), weight)
    index = torch.where(beyond, torch.full_like(index, src - 1 if last_pixel else src - 2), index)
    return index, (index + 1).clamp(max=src - 1), weight.to(torch.float32)


def _blend_into(out: Tensor, a: Tensor, b: Tensor, weight: Tensor, start: Tensor) -> Tensor:
    """out (float64) = (b - a) * weight + start, the difference in float32, the rest exact in
    float64 (the float32 product is exact there): `_fma` into a reused buffer."""
    out.copy_(b.sub_(a))
    out.mul_(weight.to(torch.float64))
    return out.add_(start)


def resize_by_factor(x: Tensor, factor: float, out: Optional[Tensor] = None) -> Tensor:
    """`cv2.resize(im, None, None, fx=factor, fy=factor)` for an (H, W, C) float32 image.

    The result, (round(H * factor), round(W * factor), C) float32, is written into `out`
    when given (any strides, e.g. a view of a padded (C, H, W) blob), else into a new tensor.
    Two float64 buffers are allocated in all: on large images each allocation costs as
    much as a pass over the data.
    """
    in_h, in_w = x.shape[0], x.shape[1]
    out_h = round_half_even(in_h * factor)
    out_w = round_half_even(in_w * factor)
    if out is None:
        out = torch.empty((out_h, out_w, x.shape[2]), dtype=torch.float32, device=x.device)
    if out_h == in_h and out_w == in_w:
        return out.copy_(x)
    exact = float(out_w) / float(in_w) == factor and float(out_h) / float(in_h) == factor
    scale_x = float(in_w) / float(out_w) if exact else factor
    scale_y = float(in_h) / float(out_h) if exact else factor
    x0, x1, wx = _taps(out_w, in_w, scale_x, exact, x.device)
    y0, y1, wy = _taps(out_h, in_h, scale_y, exact, x.device)
    buf = torch.empty((max(out_h, in_h), out_w, x.shape[2]), dtype=torch.float64, device=x.device)
    left = x.index_select(1, x0)
    rows = _blend_into(buf[:in_h], left, x.index_select(1, x1), wx[:, None], left).to(torch.float32)
    top = rows.index_select(0, y0)
    return out.copy_(_blend_into(buf[:out_h], top, rows.index_select(0, y1), wy[:, None, None], top))


def resize_each_above(x: Tensor, out_w: Tensor, out_h: Tensor, longest_w: int, longest_h: int,
                      threshold: float) -> Tensor:
    """`cv2.resize(x[i], (out_w[i], out_h[i])) > threshold` for every image of x (N, H, W) float32,
    values in [0, 1] (the mask paste), at once -> (N, longest_h, longest_w) bool: image i in its
    top-left out_h[i] x out_w[i] corner, whatever beyond it.  Sizes are at least 1.

    Plain float32 arithmetic (two roundings per blend instead of one) moves a result by
    under 1e-6 here (values in [0, 1]: each blend's extra rounding is at most one ulp,
    2**-24, and two blends with weights <= 1 add a few of them), so only pixels within
    1e-5 of the threshold are recomputed with `_fma`; all others are already decided.
    """
    n, in_h, in_w = x.shape[0], x.shape[1], x.shape[2]
    x0, x1, wx = _taps_each(out_w, longest_w, in_w)
    y0, y1, wy = _taps_each(out_h, longest_h, in_h)
    left = torch.gather(x, 2, x0[:, None, :].expand(n, in_h, longest_w))
    right = torch.gather(x, 2, x1[:, None, :].expand(n, in_h, longest_w))
    rows = torch.addcmul(left, right - left, wx[:, None, :])
    top = torch.gather(rows, 1, y0[:, :, None].expand(n, longest_h, longest_w))
    bottom = torch.gather(rows, 1, y1[:, :, None].expand(n, longest_h, longest_w))
    approx = torch.addcmul(top, bottom - top, wy[:, :, None])
    above = approx > threshold
    near = torch.nonzero((approx - threshold).abs() <= 1e-5)
    if exporting() or near.shape[0] > 0:  # exported: no branch on a traced size, fix up zero or more
        i, y, c = near[:, 0], near[:, 1], near[:, 2]
        a, b, w = x0[i, c], x1[i, c], wx[i, c]
        upper = x[i, y0[i, y]]
        lower = x[i, y1[i, y]]
        first = _fma(upper.gather(1, b[:, None])[:, 0] - upper.gather(1, a[:, None])[:, 0], w,
                     upper.gather(1, a[:, None])[:, 0])
        second = _fma(lower.gather(1, b[:, None])[:, 0] - lower.gather(1, a[:, None])[:, 0], w,
                      lower.gather(1, a[:, None])[:, 0])
        above[i, y, c] = _fma(second - first, wy[i, y], first) > threshold
    return above


def _taps_each(dst: Tensor, longest: int, src: int) -> Tuple[Tensor, Tensor, Tensor]:
    """`_taps` with exact ratios for outputs of dst[i] pixels each, padded to `longest`."""
    d = torch.arange(longest, dtype=torch.float64, device=dst.device)[None, :]
    out = dst.to(torch.float64)
    scale = torch.full_like(out, float(src)) / out  # a true division (`float / tensor` multiplies by a reciprocal)
    return _taps_at((d + 0.5) * scale[:, None] - 0.5, src, True)
