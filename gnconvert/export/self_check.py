"""Check an exported artifact against the in-process model right after writing it.

Each exporter loads what it wrote with the artifact's own runtime (torch.jit,
onnxruntime, safetensors, the Detectron pickle reader), runs it on the bundled
image (or, for network pieces, on inputs made from it) and measures the largest
differences from the in-process `Detector` / network.  A report that fails
becomes a ParityError, so a bad artifact is never reported as written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from gnconvert.results.detections import Detections

# What an artifact must reproduce: the same detections, boxes within 1e-3 px, scores within 1e-5
# (CPU), network outputs within 1e-4; masks may differ where a probability sits
# within rounding of the 0.5 threshold, so they are judged by IoU.
TOLERANCES = {"box": 1e-3, "score": 1e-5, "mask_prob": 1e-5, "mask_iou_deficit": 1e-2, "onnx": 1e-4}


@dataclass
class VerifyReport:
    """Largest differences between an artifact and the in-process model."""

    target: str
    artifact: str
    checked_on: str
    differences: Dict[str, float] = field(default_factory=dict)  # measure -> max difference
    tolerances: Dict[str, float] = field(default_factory=dict)  # measure -> allowed
    detections: Optional[int] = None  # the in-process model's count, when detections are compared
    problems: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        over = [k for k, v in self.differences.items() if not v <= self.tolerances.get(k, 0.0)]
        return not self.problems and not over

    def format(self) -> str:
        lines = [f"verify {self.target} {self.artifact} on {self.checked_on}: {'PASS' if self.passed else 'FAIL'}"]
        if self.detections is not None:
            lines.append(f"  detections: {self.detections}")
        for name, value in self.differences.items():
            tol = self.tolerances.get(name, 0.0)
            lines.append(f"  max {name} difference: {value:.3g} (allowed {tol:.3g})")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def image_name(image) -> str:
    """A short name for the checked image (a path's file name, else its shape)."""
    import os

    if isinstance(image, (str, os.PathLike)):
        return os.path.basename(os.fspath(image))
    return "image " + "x".join(str(d) for d in np.shape(image))


def reference_detections(network, arch, image) -> Detections:
    """The in-process `Detector`'s detections, with dense masks, for comparison."""
    import torch

    from gnconvert.inference import Detector

    with torch.no_grad():
        return Detector(network, arch).predict(image, masks=True, dense_masks=True)


def _mask_iou_deficit(a: np.ndarray, b: np.ndarray) -> float:
    """1 - the smallest IoU over paired (N, H, W) binary masks (0 when both are empty)."""
    worst = 0.0
    for x, y in zip(a.astype(bool), b.astype(bool)):
        union = np.logical_or(x, y).sum()
        if union:
            worst = max(worst, 1.0 - np.logical_and(x, y).sum() / union)
    return float(worst)


def compare_detections(report: VerifyReport, reference: Detections, boxes: np.ndarray, scores: np.ndarray,
                       classes: np.ndarray, mask_probs: Optional[np.ndarray],
                       masks: Optional[np.ndarray]) -> VerifyReport:
    """Fill `report` with the differences of one image's detections from the reference."""
    report.detections = len(reference)
    report.tolerances.update({key: TOLERANCES[key] for key in ("box", "score", "mask_prob", "mask_iou_deficit")})
    if len(scores) != len(reference):
        report.problems.append(f"{len(scores)} detections, the in-process model has {len(reference)}")
        return report
    if not np.array_equal(np.asarray(classes, np.int64), reference.classes):
        report.problems.append("the detections' classes or their order differ")
        return report
    if len(reference) == 0:
        report.differences.update(box=0.0, score=0.0, mask_prob=0.0, mask_iou_deficit=0.0)
        return report
    report.differences["box"] = float(np.abs(np.asarray(boxes, np.float64) - reference.boxes).max())
    report.differences["score"] = float(np.abs(np.asarray(scores, np.float64) - reference.scores).max())
    if reference.mask_probs is not None and mask_probs is not None:  # box-only models have none
        report.differences["mask_prob"] = float(np.abs(np.asarray(mask_probs, np.float64)
                                                       - reference.mask_probs).max())
    if masks is not None:
        report.differences["mask_iou_deficit"] = _mask_iou_deficit(masks, reference.dense_masks())
    return report


def compare_arrays(report: VerifyReport, name: str, ours, reference, tolerance: float) -> None:
    """Record max |ours - reference| relative to max(1, max |reference|) under `name`."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        report.problems.append(f"{name}: shape {ours.shape}, expected {reference.shape}")
        return
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    report.differences[name] = float(np.abs(ours - reference).max()) / scale if reference.size else 0.0
    report.tolerances[name] = tolerance
