"""Ours against Detectron's own published detections, image by image.

For every Detectron detection on the evaluated images, look for one of ours with the
same category and box IoU >= 0.9 (greedy, Detectron's highest scores first, one to
one).  The share matched and the spread of box and score differences over matched
pairs say how close the port is beyond the single AP number.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util

from gnconvert.errors import UsageError
from gnconvert.results.coco_results import group_by_image, xywh_to_xyxy


def load_results_file(path: Path, image_ids: Iterable[int]) -> List[dict]:
    """A results JSON (Detectron's format), keeping only entries of `image_ids`."""
    wanted = {int(i) for i in image_ids}
    try:
        with open(path, "rb") as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"reference results {path} cannot be read as a COCO results JSON ({e}); "
                         "delete it and fetch it again with `gnconvert fetch --what boxes,masks`") from None
    if not isinstance(entries, list):
        raise UsageError(f"reference results {path} is not a COCO results list; fetch it again")
    return [e for e in entries if int(e["image_id"]) in wanted]


def _xyxy(entries: Sequence[dict]) -> np.ndarray:
    return xywh_to_xyxy([e["bbox"] for e in entries])


def _match(ref: List[dict], ours: List[dict], iou_threshold: float) -> List[Tuple[int, int]]:
    """(ref index, our index) pairs for one image and category."""
    if not ref or not ours:
        return []
    ious = mask_util.iou([e["bbox"] for e in ref], [e["bbox"] for e in ours], [0] * len(ours))
    ious = np.asarray(ious, np.float64).reshape(len(ref), len(ours))
    taken = np.zeros(len(ours), bool)
    pairs = []
    for r in sorted(range(len(ref)), key=lambda i: -ref[i]["score"]):
        cand = np.where(~taken & (ious[r] >= iou_threshold))[0]
        if len(cand):
            best = cand[np.argmax(ious[r, cand])]
            taken[best] = True
            pairs.append((r, int(best)))
    return pairs


def _spread(values: np.ndarray) -> Dict[str, float]:
    if values.size == 0:
        return {"median": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def compare(ours_bbox: List[dict], reference_bbox: List[dict], image_ids: Iterable[int],
            iou_threshold: float = 0.9) -> dict:
    """Share of Detectron's detections we reproduce, and how far matched pairs differ."""
    image_ids = sorted({int(i) for i in image_ids})
    ours_by_image, ref_by_image = group_by_image(ours_bbox), group_by_image(reference_bbox)
    box_diffs, score_diffs = [np.zeros(0)], [np.zeros(0)]  # per image and category, matched pairs only
    n_ref = n_ours = n_matched = 0
    for image_id in image_ids:
        ref_img, ours_img = ref_by_image.get(image_id, []), ours_by_image.get(image_id, [])
        n_ref += len(ref_img)
        n_ours += len(ours_img)
        for cat in {e["category_id"] for e in ref_img}:
            ref_c = [e for e in ref_img if e["category_id"] == cat]
            ours_c = [e for e in ours_img if e["category_id"] == cat]
            pairs = _match(ref_c, ours_c, iou_threshold)
            if not pairs:
                continue
            r_idx, o_idx = zip(*pairs)
            box_diffs.append(np.abs(_xyxy([ref_c[i] for i in r_idx]) - _xyxy([ours_c[i] for i in o_idx])).max(1))
            score_diffs.append(np.abs(np.array([ref_c[i]["score"] for i in r_idx])
                                      - np.array([ours_c[i]["score"] for i in o_idx])))
            n_matched += len(pairs)
    return {
        "iou_threshold": iou_threshold,
        "images": len(image_ids),
        "detectron_detections": n_ref,
        "our_detections": n_ours,
        "matched": n_matched,
        "matched_share": (n_matched / n_ref) if n_ref else float("nan"),
        "ours_unmatched": n_ours - n_matched,
        "box_max_abs_diff_px": _spread(np.concatenate(box_diffs)),
        "score_abs_diff": _spread(np.concatenate(score_diffs)),
    }
