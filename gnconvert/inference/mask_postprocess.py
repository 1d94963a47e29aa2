"""Masks in original-image pixels, as Detectron pastes them (core/test.py:
im_detect_mask, segm_results).

The mask RoIs are the final boxes times the image scale (float64, then float32).
Paste-back: each box is expanded about its centre by (M+2)/M (M = 28) in float32
and truncated to int32 toward zero; the M x M probabilities get a one-pixel zero
border (30 x 30) and OpenCV's bilinear resize to the box's "+1" size (at least
1 x 1, `cv2_resize`); pixels > 0.5 are set, and the result is pasted, clipped to
the image.

A pasted mask is kept as its crop: the part of the resized box inside the image,
and where it starts.  Image-sized (N, H, W) masks are made only when asked for
(`dense`); RLEs come from the crops (`rle`), so a 4000 x 3000 photo with 100
detections never holds 1.2 GB of masks.  The resizes run batched, in chunks that
bound their padded size.  Host sync: the boxes' integer corners (the crops' sizes).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from gnconvert.inference.cv2_resize import resize_each_above


def mask_rois(boxes: Tensor, im_scale: float) -> Tensor:
    """Final boxes (N, 4) in original pixels -> network-input pixels, Detectron's rounding."""
    return (boxes.to(torch.float64) * im_scale).to(torch.float32)


def class_probs(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """(N, K, M, M) logits -> (N, M, M) sigmoid of each detection's own class."""
    n = mask_logits.shape[0]
    picked = mask_logits[torch.arange(n, device=mask_logits.device), classes.to(mask_logits.device)]
    return 1.0 / (1.0 + torch.exp(-picked))


def reference_boxes(boxes: Tensor, resolution: int) -> Tensor:
    """`expand_boxes(boxes, (M+2)/M).astype(int32)`: float32 arithmetic, truncated -> (N, 4) int64."""
    scale = (resolution + 2.0) / resolution
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)
    return expanded.to(torch.int32).to(torch.int64)


def paste(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float, budget: int = 1 << 22
          ) -> Tuple[List[Tensor], Tensor]:
    """(N, M, M) probabilities + (N, 4) float32 boxes -> each mask's crop inside the image
    ((h_i, w_i) uint8, possibly empty) and where the crops start, (N, 2) int64 (y, x).
    budget bounds chunk * longest_h * longest_w resized pixels at once."""
    n, m = probs.shape[0], probs.shape[-1]
    ref = reference_boxes(boxes, m)
    ref_w = torch.clamp(ref[:, 2] - ref[:, 0] + 1, min=1)
    ref_h = torch.clamp(ref[:, 3] - ref[:, 1] + 1, min=1)
    x0 = torch.clamp(ref[:, 0], min=0)
    y0 = torch.clamp(ref[:, 1], min=0)
    x1 = torch.clamp(ref[:, 2] + 1, max=width)
    y1 = torch.clamp(ref[:, 3] + 1, max=height)
    # everything the crops need, read back at once: the one sync of the paste
    corners: List[List[int]] = torch.stack((ref[:, 0], ref[:, 1], ref_w, ref_h, x0, y0, x1, y1), 1).tolist()
    padded = torch.zeros((n, m + 2, m + 2), dtype=torch.float32, device=probs.device)
    padded[:, 1:-1, 1:-1] = probs
    # resize boxes of like size together (largest first): padding to a chunk's largest box
    # costs at most 4x, and a chunk's padded pixels stay within the budget
    keys: List[int] = [-corners[i][2] * corners[i][3] * n - (n - 1 - i) for i in range(n)]
    keys.sort()
    order = [(n - 1) - ((-k) % n) for k in keys]
    crops: List[Tensor] = [torch.zeros((0, 0), dtype=torch.uint8, device=probs.device) for _ in range(n)]
    start = 0
    while start < n:
        first = order[start]
        longest_w, longest_h = corners[first][2], corners[first][3]
        end = start + 1
        while end < n:
            w, h = corners[order[end]][2], corners[order[end]][3]
            wide, tall = max(longest_w, w), max(longest_h, h)
            if 2 * w < longest_w or 2 * h < longest_h or (end - start + 1) * wide * tall > budget:
                break
            longest_w, longest_h = wide, tall
            end += 1
        members = torch.tensor(order[start:end], dtype=torch.int64, device=probs.device)
        binary = resize_each_above(padded[members], ref_w[members], ref_h[members], longest_w, longest_h,
                                   threshold).to(torch.uint8)
        for j in range(end - start):
            bx, by, _, _, cx0, cy0, cx1, cy1 = corners[order[start + j]]
            crops[order[start + j]] = binary[j, cy0 - by: max(cy1, cy0) - by, cx0 - bx: max(cx1, cx0) - bx]
        start = end
    return crops, torch.stack((y0, x0), 1)


def dense(crops: List[Tensor], starts: Tensor, height: int, width: int) -> Tensor:
    """(N, H, W) uint8 image-sized masks from the crops."""
    out = torch.zeros((len(crops), height, width), dtype=torch.uint8, device=starts.device)
    corners: List[List[int]] = starts.tolist()
    for i, crop in enumerate(crops):
        y, x = corners[i][0], corners[i][1]
        out[i, y: y + crop.shape[0], x: x + crop.shape[1]] = crop
    return out
