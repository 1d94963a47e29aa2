"""What inference returns for one image, in original-image pixels.

Kept independent of torch so that evaluation, drawing and export checks can use it
without importing the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from gnconvert.results import coco_categories


def rle_for_pycocotools(rle: dict) -> dict:
    """An RLE whose `counts` may be JSON's str, as pycocotools' decoders want it: bytes."""
    counts = rle["counts"]
    return dict(rle, counts=counts.encode("ascii") if isinstance(counts, str) else counts)


@dataclass
class Detections:
    """Detectron's final detections for one image, in Detectron's output order
    (class-major, RoI order within a class)."""

    boxes: np.ndarray  # (N, 4) float32, x1, y1, x2, y2 (inclusive pixel coords, Detectron's convention)
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64, Detectron's contiguous class index 1..80
    image_size: Tuple[int, int]  # (height, width) of the original image
    masks_rle: Optional[List[dict]] = None  # pycocotools RLE per detection, counts as str
    mask_probs: Optional[np.ndarray] = None  # (N, M, M) float32 sigmoid of each detection's class
    masks: Optional[np.ndarray] = None  # (N, H, W) uint8 pasted masks, only when asked for (dense_masks=True)
    timings: dict = field(default_factory=dict)  # stage name -> seconds

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep) -> Detections:
        """The detections where `keep` (a boolean mask or indices) holds, in their order."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Detections(
            boxes=self.boxes[idx], scores=self.scores[idx], classes=self.classes[idx], image_size=self.image_size,
            masks_rle=None if self.masks_rle is None else [self.masks_rle[i] for i in idx.tolist()],
            mask_probs=pick(self.mask_probs), masks=pick(self.masks), timings=dict(self.timings))

    @property
    def category_names(self) -> List[str]:
        return [coco_categories.name(c) for c in self.classes]

    def dense_masks(self) -> np.ndarray:
        """(N, H, W) uint8 binary masks decoded from the RLEs."""
        from pycocotools import mask as mask_util

        if self.masks is not None:
            return self.masks
        h, w = self.image_size
        if not self.masks_rle:
            return np.zeros((0, h, w), np.uint8)
        rles = [rle_for_pycocotools(r) for r in self.masks_rle]
        return np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1))
