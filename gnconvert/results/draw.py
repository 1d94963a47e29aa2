"""Draw detections over an image: the picture a person wants to look at after `predict`.

Masks are alpha-blended in a per-class colour, outlined, and each box gets a
"name score" label.  Pure OpenCV on the BGR image; nothing here affects results.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from gnconvert.results.detections import Detections, rle_for_pycocotools


def class_color(contiguous_class: int) -> tuple:
    """A stable, well-separated BGR colour per class (golden-ratio hue walk)."""
    h = (int(contiguous_class) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_bgr: np.ndarray, dets: Detections, score_thresh: float = 0.5,
                    alpha: float = 0.45) -> np.ndarray:
    """Return a copy of the image with masks, boxes and labels of detections scoring >= score_thresh.

    Only the drawn detections' masks are decoded, one at a time, and each is blended and
    outlined within its own bounding box: a 4000 x 3000 photo costs what its objects cost."""
    from pycocotools import mask as mask_util

    canvas = np.ascontiguousarray(image_bgr.copy())
    keep = np.flatnonzero(dets.scores >= score_thresh)
    height, width = canvas.shape[:2]
    # lowest score first so the most confident detections end up on top
    for i in keep[np.argsort(dets.scores[keep], kind="stable")]:
        color = class_color(dets.classes[i])
        full = dets.masks[i] if dets.masks is not None else None
        if full is None and dets.masks_rle:
            full = mask_util.decode(rle_for_pycocotools(dets.masks_rle[i]))
        if full is not None:
            ys, xs = np.nonzero(full.any(axis=1))[0], np.nonzero(full.any(axis=0))[0]
            if len(ys):
                y0, y1, x0, x1 = ys[0], min(ys[-1] + 2, height), xs[0], min(xs[-1] + 2, width)
                m = np.ascontiguousarray(full[y0:y1, x0:x1])
                region = canvas[y0:y1, x0:x1]
                on = m.astype(bool)
                region[on] = (region[on] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(int(x0), int(y0)))
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
