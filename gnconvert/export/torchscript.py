"""`--to torchscript`: Detectron's whole test-time pipeline in one scripted archive.

The archive runs with torch and torchvision alone (torchvision for RoIAlign):

    import torch, torchvision
    extra = {"architecture.json": "", "provenance.json": ""}
    model = torch.jit.load("model.pt", _extra_files=extra)
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR
    out["boxes"], out["scores"], out["classes"], out["mask_probs"], out["masks"]

Its extra files record what made it: the architecture and test settings, the
provenance of the weights, the input/output contract and Detectron's cfg text.
"""
from __future__ import annotations

import json

import numpy as np
from typing import Dict, List, Optional

from ..converted import ConvertedCheckpoint
from ..detections import Detections
from .common import BUNDLED_IMAGE, loaded_network
from .verify import image_name, VerifyReport, compare_detections, reference_detections

INPUT = "(H, W, 3) uint8 BGR image tensor, as cv2.imread gives it"


def extra_files(ckpt: ConvertedCheckpoint) -> Dict[str, str]:
    """The archive's `_extra_files`: JSON records (and the cfg) beside the code."""
    from .. import __version__
    from ..inference.detector import OUTPUTS

    arch = ckpt.arch.to_dict()
    files = {
        "architecture.json": json.dumps(arch, indent=1),
        "test_settings.json": json.dumps(arch["test"], indent=1),
        "provenance.json": json.dumps({**ckpt.provenance, "exported_by": f"gnconvert {__version__}"}, indent=1),
        "io.json": json.dumps({"input": INPUT, "outputs": OUTPUTS}, indent=1),
    }
    if ckpt.cfg_text is not None:
        files["detectron_cfg.yaml"] = ckpt.cfg_text
    return files


def script(ckpt: ConvertedCheckpoint, network=None):
    """The scripted `Detector` for a checkpoint: the very module `predict` runs, weights frozen."""
    import torch

    from ..inference import Detector

    network = loaded_network(ckpt) if network is None else network
    detector = Detector(network, ckpt.arch).eval()
    for p in detector.parameters():
        p.requires_grad_(False)
    return torch.jit.script(detector)


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    """Script the pipeline and save it, with its extra files, to paths[0]."""
    import torch

    torch.jit.save(script(ckpt, network), paths[0], _extra_files=extra_files(ckpt))


def run_archive(path, image_bgr) -> Dict[str, np.ndarray]:
    """Load an archive with torch.jit alone and run it on one BGR uint8 array -> numpy outputs."""
    import torch
    import torchvision  # noqa: F401  (registers torchvision::roi_align for the archive)

    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = module(torch.from_numpy(image_bgr))
    return {k: v.numpy() for k, v in out.items()}


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None,
           reference: Optional[Detections] = None, image=BUNDLED_IMAGE) -> VerifyReport:
    """Run the written archive on `image` and compare with the in-process `Detector`."""
    from ..inference.preprocess import load_image

    network = loaded_network(ckpt) if network is None else network
    im = load_image(image)
    if reference is None:
        reference = reference_detections(network, ckpt.arch, im)
    out = run_archive(paths[0], im)
    report = VerifyReport("torchscript", paths[0], f"{image_name(image)} (whole pipeline)")
    return compare_detections(report, reference, out["boxes"], out["scores"], out["classes"], out["mask_probs"],
                              out["masks"])
