"""Reading Detectron's reference outputs (the `golden/` layout).

`detectron/TAG.json` holds per image the final detections (contiguous class
index, x1 y1 x2 y2 in original pixels, score, RLE); `detectron/TAG__STEM.npz`
the intermediates of the same run.  Kept apart from `parity` so that the
selftest's bundled copy and the full golden folder read the same way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from gnconvert.errors import ParityError
from gnconvert.results.detections import Detections

# TAG -> (inventory / architecture name, depth, flavour)
TAG_ARCHITECTURES = {
    "R-50-FPN-GN": "e2e_mask_rcnn_R-50-FPN_2x_gn",
    "R-101-FPN-GN": "e2e_mask_rcnn_R-101-FPN_2x_gn",
    "R-50-FPN-BN": "e2e_mask_rcnn_R-50-FPN_2x",
    "R-101-FPN-BN": "e2e_mask_rcnn_R-101-FPN_2x",
}


@dataclass
class GoldenImage:
    tag: str
    image: str  # file name, e.g. "astronaut.png"
    detections: Detections
    detectron_cpu_seconds: Optional[float]
    intermediates: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return os.path.splitext(self.image)[0]


def architecture_name(tag: str) -> str:
    """'R-50-FPN-GN_seed1' -> 'e2e_mask_rcnn_R-50-FPN_2x_gn'."""
    base = tag.split("_seed")[0]
    if base not in TAG_ARCHITECTURES:
        raise ParityError(f"reference tag {tag!r} names no known architecture; expected one of {sorted(TAG_ARCHITECTURES)}")
    return TAG_ARCHITECTURES[base]


def seed_of(tag: str) -> int:
    return int(tag.split("_seed")[1]) if "_seed" in tag else 1


def detections_from_json(entry: dict) -> Detections:
    dets = entry["detections"]
    h, w = entry["image_shape"][:2]
    return Detections(
        boxes=np.array([d["bbox_xyxy"] for d in dets], dtype=np.float32).reshape(-1, 4),
        scores=np.array([d["score"] for d in dets], dtype=np.float32),
        classes=np.array([d["category_index"] for d in dets], dtype=np.int64),
        image_size=(int(h), int(w)),
        masks_rle=[dict(d["segmentation"]) for d in dets],
    )


def records(folder: Path, tag: str) -> Dict[str, dict]:
    """image name -> its raw entry in `detectron/TAG.json` (image_shape, detections, seconds)."""
    path = Path(folder) / "detectron" / f"{tag}.json"
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ParityError(f"reference file {path} cannot be read ({e}); restore it from the golden folder") from e


def load(folder: Path, tag: str, image: str, intermediates: bool = True) -> GoldenImage:
    """Reference detections (and intermediates, if present) for one image of one run."""
    folder = Path(folder)
    data = records(folder, tag)
    if image not in data:
        raise ParityError(f"reference {folder / 'detectron' / f'{tag}.json'} has no image {image!r}; "
                          f"it holds {sorted(data)}")
    entry = data[image]
    golden = GoldenImage(
        tag=tag,
        image=image,
        detections=detections_from_json(entry),
        detectron_cpu_seconds=entry.get("detectron_cpu_seconds"),
    )
    npz = folder / "detectron" / f"{tag}__{golden.stem}.npz"
    if intermediates and npz.is_file():
        with np.load(npz) as z:
            golden.intermediates = {k: z[k] for k in z.files}
    return golden
