"""What a run mode costs in fidelity, measured against Detectron's golden outputs.

Per mode, over golden images of one seeded checkpoint:
- the share of Detectron's detections matched under the golden README's strict criteria
  (same class, box IoU >= 0.99, |score difference| <= 1e-3) and under a loose one (same
  class, IoU >= 0.9, |score difference| <= 0.05);
- box and mask AP with Detectron's detections as the ground truth (`golden_coco`), through
  the real COCO evaluation: what verify would see if Detectron were always right;
- the FPN maps' largest error relative to their largest magnitude, on the golden crops.

The exact mode scores ~100% / ~100 AP here; a fast mode's figures are its measured price.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from gnconvert.fidelity import golden_coco, golden_format
from gnconvert.fidelity.matching import match_detections
from gnconvert.fidelity.parity import MAP_REL_TOL, relative_error
from gnconvert.results.detections import Detections

LOOSE_IOU = 0.9
LOOSE_SCORE = 0.05


@dataclass
class ImageFidelity:
    image: str
    reference: int  # Detectron's detections
    ours: int
    strict: int  # of Detectron's, matched under the README's criteria
    loose: int  # matched under the loose criteria
    fpn_rel_error: Optional[float]  # None when the golden files hold no FPN crops
    seconds: float


@dataclass
class ModeFidelity:
    mode: str
    tag: str
    images: List[ImageFidelity] = field(default_factory=list)
    box_ap: float = float("nan")
    mask_ap: float = float("nan")

    @property
    def reference(self) -> int:
        return sum(i.reference for i in self.images)

    @property
    def strict_share(self) -> float:
        return sum(i.strict for i in self.images) / max(self.reference, 1)

    @property
    def loose_share(self) -> float:
        return sum(i.loose for i in self.images) / max(self.reference, 1)

    @property
    def fpn_rel_error(self) -> Optional[float]:
        errors = [i.fpn_rel_error for i in self.images if i.fpn_rel_error is not None]
        return max(errors) if errors else None

    def to_dict(self) -> Dict[str, object]:
        return {"mode": self.mode, "tag": self.tag, "images": [vars(i) for i in self.images],
                "reference_detections": self.reference, "strict_share": self.strict_share,
                "loose_share": self.loose_share, "box_ap": self.box_ap, "mask_ap": self.mask_ap,
                "fpn_rel_error": self.fpn_rel_error}

    def summary(self) -> str:
        """Images, Detectron's detections, the shares matched and the APs: how every report of a run begins."""
        return (f"{len(self.images)} image(s), {self.reference} Detectron detections: "
                f"{100 * self.strict_share:.1f}% matched strictly (IoU>=0.99, |dscore|<=1e-3), "
                f"{100 * self.loose_share:.1f}% loosely (IoU>={LOOSE_IOU}, |dscore|<={LOOSE_SCORE}); "
                f"AP vs Detectron's detections: box {self.box_ap:.1f}, mask {self.mask_ap:.1f}")

    def format(self) -> str:
        fpn = self.fpn_rel_error
        fpn_text = "n/a" if fpn is None else f"{fpn:.1e} of max |value| (exact-mode bound {MAP_REL_TOL:.0e})"
        return f"{self.mode}: {self.summary()}; FPN error {fpn_text}"


def strict_and_loose(reference: Detections, ours: Detections) -> Tuple[int, int]:
    """How many of `reference`'s detections `ours` matches under the README's criteria, and under the loose ones."""
    strict = match_detections(reference, ours)
    loose = match_detections(reference, ours, masks=False, min_iou=LOOSE_IOU, score_tol=LOOSE_SCORE)
    return len(strict.pairs), len(loose.pairs)


def _fpn_error(ours: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]) -> Optional[float]:
    # only maps of the same size compare (another test scale makes other maps)
    keys = [k for k in reference if k.startswith("p") and k.endswith("_crop") and k in ours
            and ours[k].shape == reference[k].shape]
    if not keys:
        return None
    return max(relative_error(ours[k], reference[k]) for k in keys)


def judge_runs(run_image: Callable[[str], Tuple[Detections, Dict[str, np.ndarray]]], folder: Path, tag: str,
               images: Sequence[str], mode: str, intermediates: bool = True) -> ModeFidelity:
    """`run_image(image path) -> (detections, recorded intermediates)` on golden `images` of run `tag`,
    timed and judged against Detectron's outputs: what every fidelity measurement shares."""
    from gnconvert.evaluation import coco_eval
    from gnconvert.results.coco_results import to_results

    folder = Path(folder)
    result = ModeFidelity(mode=mode, tag=tag)
    entries, bbox, segm = [], [], []
    raw = golden_format.records(folder, tag)
    for image_id, name in enumerate(images, start=1):
        golden = golden_format.load(folder, tag, name, intermediates=intermediates)
        t0 = time.perf_counter()
        ours, recorded = run_image(str(folder / "images" / name))
        seconds = time.perf_counter() - t0
        strict, loose = strict_and_loose(golden.detections, ours)
        result.images.append(ImageFidelity(
            image=name, reference=len(golden.detections), ours=len(ours), strict=strict, loose=loose,
            fpn_rel_error=_fpn_error(recorded, golden.intermediates), seconds=seconds))
        b, s = to_results(image_id, ours)
        bbox += b
        segm += s
        entries.append((image_id, name, raw[name]))
    truth = golden_coco.ground_truth(entries, f"Detectron's detections for {tag}")
    evals = coco_eval.evaluate(truth, {"bbox": bbox, "segm": segm}, [e[0] for e in entries])
    result.box_ap = float(evals["bbox"]["metrics"]["AP"])
    result.mask_ap = float(evals["segm"]["metrics"]["AP"])
    return result


def measure(detector, folder: Path, tag: str, images: Sequence[str], mode: str = "") -> ModeFidelity:
    """Run `detector` (any mode) on golden `images` of run `tag` under `folder` (a golden folder
    or the selftest bundle) and measure its fidelity to Detectron's outputs."""
    from gnconvert.fidelity.stage_run import StageRun

    def run_image(path: str) -> Tuple[Detections, Dict[str, np.ndarray]]:
        run = StageRun(detector, path)
        return run.detections(), run.intermediates

    return judge_runs(run_image, folder, tag, images, mode or getattr(getattr(detector, "mode", None), "name", "?"))
