"""Detectron's box arithmetic (utils/boxes.py) in float32 torch.

Detectron's "+1" convention: a box (x1, y1, x2, y2) spans x2 - x1 + 1 pixels, a
decoded box ends at centre + w/2 - 1.  Every formula keeps Detectron's operation
order so that float32 results agree to the bit where the ops are IEEE-exact.
"""
from __future__ import annotations

from typing import List, cast

import torch
from torch import Tensor

from gnconvert.inference.exportable import exporting


def float32(x: float) -> float:
    """x rounded to float32, the value Detectron's numpy compared against."""
    if not torch.jit.is_scripting():
        if isinstance(x, Tensor):  # an exported program's scale
            return x.to(torch.float32)
    return float(torch.tensor(x, dtype=torch.float32).item())


def as_float(x: int) -> float:
    """float(x), kept symbolic while torch.export traces a size (float() would fix it to one value)."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return cast(float, torch.sym_float(x))  # a SymFloat stands for the float
    return float(x)


def divide(x: Tensor, divisor: float) -> Tensor:
    """x / divisor as a true float32 division on every device (CUDA multiplies by the
    reciprocal of a Python-number divisor, which can differ in the last bit)."""
    if not torch.jit.is_scripting():
        if isinstance(divisor, Tensor):
            return x / divisor.to(x.dtype)
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def decode(boxes: Tensor, deltas: Tensor, weights: List[float], clip: float) -> Tensor:
    """`bbox_transform`: apply (dx, dy, dw, dh) deltas, 4 per class, to boxes (R, 4).

    deltas is (R, 4K); dw and dh are clamped from above only, at `clip` rounded to
    float32 as Detectron's numpy (< 2) did.
    """
    if not exporting() and boxes.shape[0] == 0:
        return torch.zeros((0, deltas.shape[1]), dtype=deltas.dtype, device=deltas.device)
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx = divide(deltas[:, 0::4], weights[0])
    dy = divide(deltas[:, 1::4], weights[1])
    clip32 = float32(clip)
    dw = torch.clamp(divide(deltas[:, 2::4], weights[2]), max=clip32)
    dh = torch.clamp(divide(deltas[:, 3::4], weights[3]), max=clip32)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.empty_like(deltas)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return out


def clip_tiled(boxes: Tensor, height: float, width: float) -> Tensor:
    """`clip_tiled_boxes`: x into [0, width - 1], y into [0, height - 1], every 4-column tile."""
    out = boxes.clone()
    for i, limit in enumerate([width, height, width, height]):
        out[:, i::4] = out[:, i::4].clamp(max=limit - 1).clamp(min=0)
    return out


def areas(boxes: Tensor) -> Tensor:
    """"+1" areas (negative for inverted boxes; callers decide)."""
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def pairwise_overlap_between(a: Tensor, b: Tensor) -> Tensor:
    """cython_nms's IoU of every box of a (..., N, 4) with every box of b (..., M, 4) -> (..., N, M),
    float32, its operations in its order: inter = max(0, min(x2) - max(x1) + 1) * (the same for y);
    inter / (area_a + area_b - inter).  In place where possible: the matrices are large and each
    allocation costs as much as an operation."""
    low = torch.maximum(a[..., :, None, 0], b[..., None, :, 0])
    inter = torch.minimum(a[..., :, None, 2], b[..., None, :, 2]).sub_(low).add_(1).clamp_(min=0)
    torch.maximum(a[..., :, None, 1], b[..., None, :, 1], out=low)
    h = torch.minimum(a[..., :, None, 3], b[..., None, :, 3]).sub_(low).add_(1).clamp_(min=0)
    inter.mul_(h)
    union = torch.add(areas(a)[..., :, None], areas(b)[..., None, :], out=h).sub_(inter)
    return inter.div_(union)
