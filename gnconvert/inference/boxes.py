"""Detectron's box arithmetic (utils/boxes.py, utils/cython_nms.pyx) in float32 torch.

Detectron's "+1" convention: a box (x1, y1, x2, y2) spans x2 - x1 + 1 pixels, a
decoded box ends at centre + w/2 - 1.  Every formula keeps Detectron's operation
order so that float32 results agree to the bit where the ops are IEEE-exact.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from . import sorting


def decode(boxes: torch.Tensor, deltas: torch.Tensor, weights: List[float], clip: float) -> torch.Tensor:
    """`bbox_transform`: apply (dx, dy, dw, dh) deltas, 4 per class, to boxes (R, 4).

    deltas is (R, 4K); dw and dh are clamped from above only, at `clip` rounded to
    float32 as Detectron's numpy (< 2) did.  TorchScript-able (the export reuses it).
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0, deltas.shape[1]), dtype=deltas.dtype, device=deltas.device)
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx = deltas[:, 0::4] / weights[0]
    dy = deltas[:, 1::4] / weights[1]
    clip32 = torch.tensor(clip, dtype=torch.float32).item()
    dw = torch.clamp(deltas[:, 2::4] / weights[2], max=clip32)
    dh = torch.clamp(deltas[:, 3::4] / weights[3], max=clip32)
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


def clip_tiled(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """`clip_tiled_boxes`: x into [0, width - 1], y into [0, height - 1], every 4-column tile."""
    out = boxes.clone()
    out[:, 0::4] = out[:, 0::4].clamp(max=width - 1).clamp(min=0)
    out[:, 1::4] = out[:, 1::4].clamp(max=height - 1).clamp(min=0)
    out[:, 2::4] = out[:, 2::4].clamp(max=width - 1).clamp(min=0)
    out[:, 3::4] = out[:, 3::4].clamp(max=height - 1).clamp(min=0)
    return out


def areas(boxes: torch.Tensor) -> torch.Tensor:
    """"+1" areas (may be negative for inverted boxes; callers decide)."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def pairwise_overlap(boxes: torch.Tensor) -> torch.Tensor:
    """cython_nms's IoU for every pair, same float32 ops in the same order:
    inter = max(0, min(x2) - max(x1) + 1) * (same for y); inter / (a_i + a_j - inter)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = areas(boxes)
    w = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :]) + 1).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :]) + 1).clamp(min=0)
    inter = w * h
    return inter / (area[:, None] + area[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Detectron's greedy NMS: indices kept, in ascending input order.

    Boxes are visited in `scores.argsort()[::-1]` order (numpy's tie order, see
    `sorting`); a box is suppressed when its IoU with a kept one is >= thresh
    (torchvision's nms uses > and no "+1", so it is not used here).
    """
    n = int(boxes.shape[0])
    if n == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    suppress = (pairwise_overlap(boxes) >= float(np.float32(thresh))).cpu().numpy()
    order = sorting.nms_order(scores.detach().cpu().numpy())
    suppressed = np.zeros(n, dtype=bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        # the overlap matrix is symmetric, so boxes visited earlier are never
        # touched here: a kept box overlapping i would already have removed i
        suppressed |= suppress[i]
    keep = np.sort(np.asarray(kept, dtype=np.int64))
    return torch.from_numpy(keep).to(boxes.device)
