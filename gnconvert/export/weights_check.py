"""Shared check for the two weight formats: same tensors, and the same detections."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from gnconvert.architecture import Architecture
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.export.common import loaded_network
from gnconvert.export.self_check import VerifyReport, compare_detections, reference_detections
from gnconvert.results.detections import Detections


def check_weights(report: VerifyReport, ckpt: ConvertedCheckpoint, loaded: Mapping[str, np.ndarray]) -> None:
    """Every parameter present, same shape, same bits (difference 0, allowed 0)."""
    missing = sorted(set(ckpt.state_dict) - set(loaded))
    extra = sorted(set(loaded) - set(ckpt.state_dict))
    if missing or extra:
        report.problems.append(f"parameters missing: {missing[:3]}, unexpected: {extra[:3]}")
        return
    worst, differing = 0.0, []
    for name, value in ckpt.state_dict.items():
        got = np.asarray(loaded[name])
        if got.shape != value.shape or got.dtype != np.float32:
            report.problems.append(f"{name}: {got.dtype}{got.shape}, expected float32{value.shape}")
            return
        if not np.array_equal(got.view(np.uint32), np.ascontiguousarray(value, np.float32).view(np.uint32)):
            differing.append(name)
            worst = max(worst, float(np.nan_to_num(np.abs(got.astype(np.float64) - value), nan=np.inf).max()))
    if differing:
        report.problems.append(f"{len(differing)} parameters are not bit-identical, e.g. {differing[0]}")
    report.differences["weights"] = worst
    report.tolerances["weights"] = 0.0


def run_loaded(report: VerifyReport, arch: Architecture, loaded: Mapping[str, np.ndarray], ckpt: ConvertedCheckpoint,
               network, reference: Optional[Detections], image) -> None:
    """Build a network from the reloaded tensors, detect on `image`, compare with the in-process model."""
    from gnconvert.inference.preprocess import load_image

    if report.problems:
        return
    im = load_image(image)
    if reference is None:
        reference = reference_detections(loaded_network(ckpt) if network is None else network, ckpt.arch, im)
    reloaded = loaded_network(ConvertedCheckpoint(state_dict=dict(loaded), arch=arch))
    ours = reference_detections(reloaded, arch, im)
    compare_detections(report, reference, ours.boxes, ours.scores, ours.classes, ours.mask_probs, ours.dense_masks())
