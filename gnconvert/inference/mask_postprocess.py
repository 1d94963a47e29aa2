"""Masks in original-image pixels, as Detectron pastes them (core/test.py:
im_detect_mask, segm_results).

The mask RoIs are the final boxes times the image scale (float64, then float32).
Paste-back: each box is expanded about its centre by (M+2)/M (M = 28) and
truncated to int32 toward zero; the M x M probabilities get a one-pixel zero
border (30 x 30) and OpenCV's bilinear resize to the box's "+1" size (at least
1 x 1); pixels > 0.5 are set, and the result is pasted, clipped to the image.
RLE by pycocotools from a Fortran-ordered H x W x 1 array, counts as str.
"""
from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util


def mask_rois(boxes: torch.Tensor, im_scale: float) -> torch.Tensor:
    """Final boxes (N, 4) in original pixels -> network-input pixels, Detectron's rounding."""
    return (boxes.to(torch.float64) * im_scale).to(torch.float32)


def class_probs(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, K, M, M) logits -> (N, M, M) sigmoid of each detection's own class."""
    n = mask_logits.shape[0]
    picked = mask_logits[torch.arange(n, device=mask_logits.device), classes.to(mask_logits.device)]
    return 1.0 / (1.0 + torch.exp(-picked))


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """`expand_boxes`, in the boxes' dtype, then float64 as Detectron's np.zeros is."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    out = np.zeros(boxes.shape)
    out[:, 0] = x_c - w_half
    out[:, 2] = x_c + w_half
    out[:, 1] = y_c - h_half
    out[:, 3] = y_c + h_half
    return out


def paste_masks(
    probs: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """(N, M, M) probabilities + (N, 4) float32 boxes -> (N, H, W) uint8 masks."""
    im_h, im_w = image_size
    n, m = probs.shape[0], probs.shape[-1]
    out = np.zeros((n, im_h, im_w), dtype=np.uint8)
    if n == 0:
        return out
    ref = expand_boxes(np.asarray(boxes, dtype=np.float32), (m + 2.0) / m).astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    for i in range(n):
        padded[1:-1, 1:-1] = probs[i]
        x1, y1, x2, y2 = (int(v) for v in ref[i])
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        mask = np.array(cv2.resize(padded, (w, h)) > threshold, dtype=np.uint8)
        x0, x_1 = max(x1, 0), min(x2 + 1, im_w)
        y0, y_1 = max(y1, 0), min(y2 + 1, im_h)
        if x_1 > x0 and y_1 > y0:
            out[i, y0:y_1, x0:x_1] = mask[y0 - y1 : y_1 - y1, x0 - x1 : x_1 - x1]
    return out


def encode(masks: np.ndarray) -> List[dict]:
    """(N, H, W) uint8 -> COCO RLEs with str counts, one per mask."""
    rles = []
    for mask in masks:
        rle = mask_util.encode(np.array(mask[:, :, None], order="F"))[0]
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
    return rles
