"""Draw detections over an image: the picture a person wants to look at after `predict`.

Masks are alpha-blended in a per-class colour, outlined, and each box gets a
"name score" label.  Pure OpenCV on the BGR image; nothing here affects results.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .detections import Detections


def class_color(contiguous_class: int) -> tuple:
    """A stable, well-separated BGR colour per class (golden-ratio hue walk)."""
    h = (int(contiguous_class) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_bgr: np.ndarray, dets: Detections, score_thresh: float = 0.5,
                    alpha: float = 0.45) -> np.ndarray:
    """Return a copy of the image with masks, boxes and labels of detections scoring >= score_thresh."""
    canvas = np.ascontiguousarray(image_bgr.copy())
    keep = np.flatnonzero(dets.scores >= score_thresh)
    masks = dets.dense_masks() if dets.masks_rle else None
    # lowest score first so the most confident detections end up on top
    for i in keep[np.argsort(dets.scores[keep], kind="stable")]:
        color = class_color(dets.classes[i])
        if masks is not None:
            m = masks[i].astype(bool)
            if m.any():
                canvas[m] = (canvas[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
                contours, _ = cv2.findContours(masks[i], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, color, 1, cv2.LINE_AA)
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2, cv2.LINE_AA)
        label = f"{dets.category_names[i]} {dets.scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ty = max(y1, th + base + 2)
        cv2.rectangle(canvas, (x1, ty - th - base - 2), (x1 + tw + 2, ty), color, -1)
        cv2.putText(canvas, label, (x1 + 1, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
