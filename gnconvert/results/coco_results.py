"""Detections <-> Detectron's COCO results files (`json_dataset_evaluator.py`).

Detectron writes one entry per detection, class-major (contiguous class 1..80), then
by ascending image id, then in detection order; boxes as `[x1, y1, x2 - x1 + 1,
y2 - y1 + 1]` computed in float64 from the float32 boxes; category ids through the
contiguous 1..80 -> COCO id mapping; mask RLE `counts` as str.  Writing ours the same
way lets us compare files byte for byte and evaluate Detectron's published files with
the same code.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np

from gnconvert.results import coco_categories
from gnconvert.results.detections import Detections


def _counts_str(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def xyxy_to_xywh(boxes) -> np.ndarray:
    """Detectron's inclusive (x1, y1, x2, y2) -> COCO's [x, y, w, h] with the "+1" width, float64 (exact
    for float32 input)."""
    b = np.asarray(boxes, np.float32).astype(np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0] + 1.0, b[:, 3] - b[:, 1] + 1.0], axis=1)


def xywh_to_xyxy(boxes) -> np.ndarray:
    """COCO's [x, y, w, h] ("+1" widths) -> Detectron's inclusive (x1, y1, x2, y2), float64."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2] - 1.0, b[:, 1] + b[:, 3] - 1.0], axis=1)


def to_results(image_id: int, dets: Detections) -> Tuple[List[dict], List[dict]]:
    """One image's (bbox entries, segm entries), in the image's detection order."""
    image_id = int(image_id)
    scores = [float(s) for s in np.asarray(dets.scores, np.float32).astype(np.float64)]
    cat_ids = [coco_categories.coco_id(c) for c in np.asarray(dets.classes).tolist()]
    bbox = [{"image_id": image_id, "category_id": cid, "bbox": [float(v) for v in box], "score": score}
            for cid, box, score in zip(cat_ids, xyxy_to_xywh(dets.boxes), scores)]
    if dets.masks_rle is None:
        return bbox, []
    if len(dets.masks_rle) != len(scores):
        raise ValueError(f"image {image_id}: {len(dets.masks_rle)} masks for {len(scores)} detections")
    segm = [{"image_id": image_id, "category_id": cid, "segmentation": _counts_str(rle), "score": score}
            for cid, rle, score in zip(cat_ids, dets.masks_rle, scores)]
    return bbox, segm


def detectron_order(entries: Iterable[dict]) -> List[dict]:
    """Entries in the order Detectron writes them: class, then image id, then detection order."""
    rank = coco_categories.COCO_TO_CONTIGUOUS
    return sorted(entries, key=lambda e: (rank[e["category_id"]], e["image_id"]))  # stable


def group_by_image(entries: Iterable[dict]) -> Dict[int, List[dict]]:
    out: Dict[int, List[dict]] = {}
    for e in entries:
        out.setdefault(int(e["image_id"]), []).append(e)
    return out


def from_results(bbox_entries: List[dict], segm_entries: List[dict] | None,
                 image_size: Tuple[int, int]) -> Detections:
    """One image's entries back to Detections (class-major like Detectron's output).

    Boxes come back exactly: w = x2 - x1 + 1 in float64 of float32 values is exact, so
    x1 + w - 1 recovers x2 before the cast back to float32.
    """
    contiguous = [coco_categories.COCO_TO_CONTIGUOUS[e["category_id"]] for e in bbox_entries]
    order = sorted(range(len(bbox_entries)), key=contiguous.__getitem__)
    boxes = xywh_to_xyxy([bbox_entries[i]["bbox"] for i in order]).astype(np.float32)
    scores = np.array([bbox_entries[i]["score"] for i in order], np.float32)
    classes = np.array([contiguous[i] for i in order], np.int64)
    masks = None
    if segm_entries is not None:
        if len(segm_entries) != len(bbox_entries):
            raise ValueError("bbox and segm entries of one image differ in number")
        masks = [dict(segm_entries[i]["segmentation"]) for i in order]
    return Detections(boxes=boxes, scores=scores, classes=classes, image_size=(int(image_size[0]), int(image_size[1])),
                      masks_rle=masks)
