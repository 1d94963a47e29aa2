"""FPN anchors as Detectron generates them (modeling/generate_anchors.py).

One anchor size per level (ANCHOR_START_SIZE * 2**(level - min_level)) and the
configured aspect ratios, built around a (0, 0, stride-1, stride-1) base box
with numpy's round-half-to-even, in float64 like Detectron, then held as float32
(exact: the values are small multiples of 0.5).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _whctrs(anchor: np.ndarray):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _boxes_around(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def cell_anchors(stride: int, size: float, aspect_ratios: Sequence[float]) -> np.ndarray:
    """(A, 4) float64 anchors of one level centred on the cell at the origin."""
    base = np.array([0.0, 0.0, stride - 1.0, stride - 1.0])
    w, h, x_ctr, y_ctr = _whctrs(base)
    ratios = np.asarray(aspect_ratios, dtype=float)
    ws = np.round(np.sqrt(w * h / ratios))
    hs = np.round(ws * ratios)
    per_ratio = _boxes_around(ws, hs, x_ctr, y_ctr)
    scale = np.array([size / stride], dtype=float)
    out = []
    for anchor in per_ratio:
        w, h, x_ctr, y_ctr = _whctrs(anchor)
        out.append(_boxes_around(w * scale, h * scale, x_ctr, y_ctr))
    return np.vstack(out)
