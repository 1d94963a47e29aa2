"""COCO's 80 categories as Detectron numbers them.

Detectron's contiguous class index i (1..80; 0 is background) is the i-th entry of
`COCO.getCatIds()`, i.e. COCO's category ids sorted ascending.
"""
from __future__ import annotations

from typing import Dict, List

# (COCO category id, name), ascending by id: exactly the 80 categories of instances_*2014/2017.json
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]

COCO_IDS: List[int] = [cid for cid, _ in COCO_CATEGORIES]
NAMES: List[str] = [name for _, name in COCO_CATEGORIES]
CONTIGUOUS_TO_COCO: Dict[int, int] = {i + 1: cid for i, cid in enumerate(COCO_IDS)}
COCO_TO_CONTIGUOUS: Dict[int, int] = {cid: i for i, cid in CONTIGUOUS_TO_COCO.items()}


def coco_id(contiguous_index: int) -> int:
    """Detectron class index 1..80 -> COCO category id."""
    return CONTIGUOUS_TO_COCO[int(contiguous_index)]


def name(contiguous_index: int) -> str:
    return NAMES[int(contiguous_index) - 1]


def categories_json() -> List[dict]:
    """The `categories` list of a COCO annotation file (supercategory omitted)."""
    return [{"id": cid, "name": n} for cid, n in COCO_CATEGORIES]
