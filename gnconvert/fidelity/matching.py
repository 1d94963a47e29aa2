"""Is a detection ours and Detectron's at once?  The golden README's criteria ("how close is
close"): at least 99% of Detectron's detections matched by one of ours with the same class, box
IoU >= 0.99 and |score difference| <= 1e-3; no more than 1% of ours unmatched; mask IoU >= 0.97
for every matched pair."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from pycocotools import mask as mask_util

from gnconvert.results.detections import Detections, rle_for_pycocotools

MIN_MATCHED = 0.99
MAX_EXTRA = 0.01
BOX_IOU = 0.99
SCORE_TOL = 1e-3
MASK_IOU = 0.97


def _area(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Area between corners (..., 2) `lo` and `hi` with Detectron's "+1" sides, a side below zero as 0."""
    sides = np.clip(hi - lo + 1, 0, None)
    return sides[..., 0] * sides[..., 1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU with Detectron's "+1" sides, so sub-pixel and zero-width boxes
    (which these seeded models produce) still compare; sides below zero count as 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter = _area(np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:]))
    union = _area(a[:, :2], a[:, 2:])[:, None] + _area(b[:, :2], b[:, 2:])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    # identical degenerate boxes (no "+1" area at all) still match each other
    same = np.all(np.abs(a[:, None, :] - b[None, :, :]) <= 1e-3, axis=2)
    return np.where(same, 1.0, iou)


def mask_iou(a: dict, b: dict) -> float:
    """IoU of two RLEs; two empty masks agree (1.0)."""
    ra, rb = rle_for_pycocotools(a), rle_for_pycocotools(b)
    union = mask_util.area(mask_util.merge([ra, rb], intersect=False))
    if union == 0:
        return 1.0
    return float(mask_util.iou([ra], [rb], [0])[0, 0])


@dataclass
class DetectionMatch:
    pairs: List[Tuple[int, int]]  # (reference index, our index)
    num_reference: int
    num_ours: int
    worst_box_iou: float = 1.0
    worst_score_diff: float = 0.0
    worst_mask_iou: Optional[float] = None

    @property
    def matched_fraction(self) -> float:
        return len(self.pairs) / self.num_reference if self.num_reference else 1.0

    @property
    def extra(self) -> int:
        return self.num_ours - len(self.pairs)

    @property
    def extra_fraction(self) -> float:
        return self.extra / max(self.num_reference, 1) if self.num_ours else 0.0

    @property
    def passed(self) -> bool:
        masks_ok = self.worst_mask_iou is None or self.worst_mask_iou >= MASK_IOU
        return self.matched_fraction >= MIN_MATCHED and self.extra_fraction <= MAX_EXTRA and masks_ok


def match_detections(
    reference: Detections, ours: Detections, masks: bool = True, min_iou: float = BOX_IOU, score_tol: float = SCORE_TOL
) -> DetectionMatch:
    """Greedy one-to-one matching, best box IoU first: same class, IoU >= min_iou,
    |score difference| <= score_tol (the README's criteria by default)."""
    nr, no = len(reference), len(ours)
    result = DetectionMatch(pairs=[], num_reference=nr, num_ours=no)
    if nr == 0 or no == 0:
        return result
    iou = box_iou(reference.boxes, ours.boxes)
    diff = np.abs(reference.scores[:, None].astype(np.float64) - ours.scores[None, :])
    ok = (reference.classes[:, None] == ours.classes[None, :]) & (iou >= min_iou) & (diff <= score_tol)
    # best IoU, then closest score first; ties by reference order
    key = [(-iou[i, j], diff[i, j], i, j) for i, j in np.argwhere(ok)]
    used_r, used_o = set(), set()
    for _, _, i, j in sorted(key):
        if i in used_r or j in used_o:
            continue
        used_r.add(i)
        used_o.add(j)
        result.pairs.append((int(i), int(j)))
    result.pairs.sort()
    if result.pairs:
        result.worst_box_iou = float(min(iou[i, j] for i, j in result.pairs))
        result.worst_score_diff = float(max(diff[i, j] for i, j in result.pairs))
        if masks and reference.masks_rle and ours.masks_rle:
            result.worst_mask_iou = min(mask_iou(reference.masks_rle[i], ours.masks_rle[j]) for i, j in result.pairs)
    return result
