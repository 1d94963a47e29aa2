"""COCO RLE masks from pasted crops, on the host, after the pipeline.

pycocotools encodes image-sized masks; building one per detection costs H x W
bytes each (1.2 GB for 100 masks on a 4000 x 3000 photo).  A crop's run lengths
in column-major image order follow from the crop alone: runs of ones are the
crop's, the zeros between them are the gaps around the crop.  pycocotools then
compresses those counts (`frPyObjects`), giving the same RLE as `encode` of the
image-sized mask (tests/test_mask_postprocess.py checks it on random crops).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util


def run_lengths(crop: np.ndarray, y: int, x: int, height: int, width: int) -> List[int]:
    """Uncompressed COCO counts (zeros first) of an H x W mask that is `crop` at (y, x), zero elsewhere."""
    crop = np.asarray(crop, dtype=bool)
    h, w = crop.shape
    total = height * width
    if h == 0 or w == 0 or not crop.any():
        return [total]
    # column-major, one zero row above and below each column so that runs end inside
    framed = np.zeros((w, h + 2), dtype=np.int8)
    framed[:, 1:-1] = crop.T
    step = np.diff(framed, axis=1)  # +1 where a run starts, -1 one past where it ends
    col_s, row_s = np.nonzero(step == 1)
    col_e, row_e = np.nonzero(step == -1)
    starts = (x + col_s) * height + (y + row_s)
    ends = (x + col_e) * height + (y + row_e)  # exclusive
    # a run that ends at the bottom row continues in the next column when it starts at row 0
    joined = starts[1:] == ends[:-1]
    if joined.any():
        starts = np.concatenate((starts[:1], starts[1:][~joined]))
        ends = np.concatenate((ends[:-1][~joined], ends[-1:]))
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = total - ends[-1]
    if counts[-1] == 0:
        counts = counts[:-1]
    return counts.tolist()


def encode(crops: Sequence[np.ndarray], starts: np.ndarray, image_size: Tuple[int, int]) -> List[dict]:
    """COCO RLEs (counts as str) of the pasted masks, one per crop."""
    height, width = image_size
    out = []
    for crop, (y, x) in zip(crops, np.asarray(starts).reshape(-1, 2).tolist()):
        rle = mask_util.frPyObjects({"counts": run_lengths(crop, y, x, height, width), "size": [height, width]},
                                    height, width)
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out
