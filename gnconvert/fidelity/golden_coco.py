"""Detectron's golden detections as a COCO-format ground truth.

With Detectron's own final detections on the golden images as ground truth, a port that
reproduces Detectron scores an AP near 100, and a fast mode's AP says how much of
Detectron's answer it keeps, through the real COCO evaluation.  Boxes become COCO
`[x, y, w, h]` with Detectron's "+1" widths; masks stay Detectron's RLEs; categories are
COCO's real ids and names.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

from pycocotools import mask as mask_util

from gnconvert.results import coco_categories
from gnconvert.results.coco_results import xyxy_to_xywh
from gnconvert.results.detections import rle_for_pycocotools


def ground_truth(entries: Iterable[Tuple[int, str, dict]], description: str = "") -> dict:
    """A COCO annotations dict from (image id, file name, golden record) triples; a golden
    record is one image's entry of `detectron/TAG.json` (image_shape, detections)."""
    images: List[dict] = []
    annotations: List[dict] = []
    for image_id, file_name, record in entries:
        h, w = record["image_shape"][:2]
        images.append({"id": int(image_id), "file_name": file_name, "height": int(h), "width": int(w)})
        for det in record["detections"]:
            rle = det["segmentation"]
            area = float(mask_util.area(rle_for_pycocotools(rle)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image_id),
                "category_id": coco_categories.coco_id(det["category_index"]),
                "bbox": [float(v) for v in xyxy_to_xywh(det["bbox_xyxy"])[0]], "area": area, "iscrowd": 0,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]},
            })
    return {"info": {"description": description}, "images": images, "annotations": annotations,
            "categories": coco_categories.categories_json()}
