"""A real COCO-format dataset made from what we have, plus a cheap real predictor.

The images are Detectron's golden inputs (`golden/images`); the ground truth is
Detectron's own final detections on them for a seeded checkpoint (`golden/detectron/
TAG.json`): boxes as COCO `[x, y, w, h]` with Detectron's +1 widths, RLE masks, COCO's
real category ids and names.  A faithful port of that checkpoint reproduces its ground
truth, so its AP is close to 100.

`GoldenPredictor` answers `predict_batch` with the golden detections of whichever
golden image it is handed (recognised by its decoded pixels): real data through the
real evaluation path, without the cost of the network.

Run as a script it verifies a dataset with that predictor (for subprocess, resume and
torchrun tests):  python tests/coco_fixture.py --coco-root DIR --output DIR [--resume]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from gnconvert.fidelity import golden_coco, golden_format
from gnconvert.results.detections import Detections

DEFAULT_TAG = "R-50-FPN-GN_seed1"
# layout -> (annotation file name, image folder, file name pattern)
LAYOUTS = {
    "2014": ("instances_minival2014.json", "val2014", "COCO_val2014_{:012d}{ext}"),
    "2017": ("instances_val2017.json", "val2017", "{:012d}{ext}"),
}


def golden_results(golden_dir: Path, tag: str = DEFAULT_TAG) -> Dict[str, dict]:
    """image file name -> Detectron's record for it (image_shape, detections)."""
    with open(Path(golden_dir) / "detectron" / f"{tag}.json") as f:
        return json.load(f)


def build_coco(root: Path, golden_dir: Path, tag: str = DEFAULT_TAG, layout: str = "2014",
               copies: int = 1) -> dict:
    """Write annotations/ and the image folder of `layout` under `root`.

    `copies` repeats the golden images (new ids, same pixels and ground truth) to make
    a longer dataset.  Returns {'root', 'annotations', 'images', 'ids': {image_id: golden name}}.
    """
    ann_name, folder, pattern = LAYOUTS[layout]
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / folder).mkdir(parents=True, exist_ok=True)
    golden = golden_results(golden_dir, tag)
    entries, ids = [], {}
    for c in range(copies):
        for k, name in enumerate(sorted(golden)):
            image_id = 139 + 1000 * c + 17 * k  # sparse ids, like COCO's
            file_name = pattern.format(image_id, ext=Path(name).suffix)
            shutil.copyfile(Path(golden_dir) / "images" / name, root / folder / file_name)
            entries.append((image_id, file_name, golden[name]))
            ids[image_id] = name
    data = golden_coco.ground_truth(entries, f"Detectron's detections for {tag} as ground truth")
    ann_path = root / "annotations" / ann_name
    with open(ann_path, "w") as f:
        json.dump(data, f)
    return {"root": root, "annotations": ann_path, "images": root / folder, "ids": ids}


def _pixel_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class GoldenPredictor:
    """Returns Detectron's golden detections for a golden image, found by its pixels.

    `swap=(a, b)` exchanges two contiguous class labels (a model with two class rows
    swapped); `delay` seconds per image make it slow enough to interrupt.
    """

    def __init__(self, golden_dir: Path, tag: str = DEFAULT_TAG, swap: Optional[Tuple[int, int]] = None,
                 delay: float = 0.0):
        golden = golden_results(golden_dir, tag)
        self._by_pixels = {}
        for name, record in golden.items():
            image = cv2.imread(str(Path(golden_dir) / "images" / name), cv2.IMREAD_COLOR)
            self._by_pixels[_pixel_key(image)] = golden_format.detections_from_json(record)
        self.swap = swap
        self.delay = delay
        self.calls = 0

    def predict(self, image: np.ndarray) -> Detections:
        key = _pixel_key(image)
        if key not in self._by_pixels:
            raise ValueError(f"GoldenPredictor: an image of shape {image.shape} is not one of the golden images")
        dets = self._by_pixels[key]
        if self.swap:
            a, b = self.swap
            classes = dets.classes.copy()
            classes[dets.classes == a], classes[dets.classes == b] = b, a
            order = np.argsort(classes, kind="stable")  # stay class-major
            dets = Detections(boxes=dets.boxes[order], scores=dets.scores[order], classes=classes[order],
                              image_size=dets.image_size, masks_rle=[dets.masks_rle[i] for i in order])
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        return dets

    def predict_batch(self, images: Sequence[np.ndarray]) -> List[Detections]:
        return [self.predict(im) for im in images]


def _main(argv=None) -> int:
    """Verify a dataset with GoldenPredictor (what subprocess and torchrun tests run)."""
    from gnconvert.errors import GnconvertError
    from gnconvert.evaluation import VerifyConfig, find_layout, run_verify

    p = argparse.ArgumentParser()
    p.add_argument("--coco-root", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--golden", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "golden")
    p.add_argument("--tag", default=DEFAULT_TAG)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--swap", help="two contiguous class indices to exchange, e.g. 61,1")
    p.add_argument("--expect-box-ap", type=float)
    p.add_argument("--expect-mask-ap", type=float)
    p.add_argument("--tolerance", type=float, default=0.1)
    args = p.parse_args(argv)
    from gnconvert.evaluation.distributed import init_from_env

    swap = tuple(int(v) for v in args.swap.split(",")) if args.swap else None
    published = {"box_ap": args.expect_box_ap, "mask_ap": args.expect_mask_ap} if args.expect_box_ap else None
    dist = init_from_env("cpu")
    try:
        config = VerifyConfig(find_layout(coco_root=args.coco_root), args.output, source=f"golden:{args.tag}",
                              published=published, tolerance=args.tolerance, limit=args.limit,
                              batch_size=args.batch_size, workers=args.workers, resume=args.resume, progress=False)
        run_verify(GoldenPredictor(args.golden, args.tag, swap=swap, delay=args.delay), config, dist=dist)
    except GnconvertError as e:
        print(f"gnconvert: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
