"""`--to torchscript`: Detectron's whole test-time pipeline in one scripted archive.

The archive runs with torch and torchvision alone.  torchvision must be imported
before `torch.jit.load`: importing it registers `torchvision::roi_align`, which the
archive calls (without it the load fails with "Unknown builtin op").

    import torch, torchvision
    extra = {"architecture.json": "", "provenance.json": ""}
    model = torch.jit.load("model.pt", _extra_files=extra)
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR
    out["boxes"], out["scores"], out["classes"], out["mask_probs"], out["masks"]

Its extra files record what made it: the architecture and test settings, the
provenance of the weights, the input/output contract, what it needs to load
(`requirements.json`, and the lines above in `README.txt`) and Detectron's cfg text.
The self-check reads the archive's code and fails if it calls an operator outside
torch and torchvision (e.g. gnconvert's own GroupNorm op), which a plain install
could not load.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

import numpy as np

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network, write_file
from gnconvert.export.self_check import VerifyReport, compare_detections, image_name, reference_detections
from gnconvert.results.detections import Detections

INPUT = "(H, W, 3) uint8 BGR image tensor, as cv2.imread gives it"
LOADING = """This is a TorchScript archive of Detectron's Mask R-CNN test pipeline (gnconvert export).
It needs torch and torchvision, and torchvision must be imported before loading it:

    import torch, torchvision        # torchvision registers torchvision::roi_align
    model = torch.jit.load("model.pt")
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR

On CUDA, for Detectron's float32 numerics, set torch.backends.cudnn.allow_tf32 = False first.
"""
_ALLOWED_OP_NAMESPACES = {"aten", "prim", "torchvision"}


def extra_files(ckpt: ConvertedCheckpoint) -> Dict[str, str]:
    """The archive's `_extra_files`: JSON records (and the cfg) beside the code."""
    from gnconvert import __version__
    from gnconvert.inference.detector import OUTPUTS

    arch = ckpt.arch.to_dict()
    files = {
        "architecture.json": json.dumps(arch, indent=1),
        "test_settings.json": json.dumps(arch["test"], indent=1),
        "provenance.json": json.dumps({**ckpt.provenance, "exported_by": f"gnconvert {__version__}"}, indent=1),
        "io.json": json.dumps({"input": INPUT, "outputs": OUTPUTS}, indent=1),
        "requirements.json": json.dumps({"python_packages": [f"torch>={_version('torch')}",
                                                             f"torchvision>={_version('torchvision')}"],
                                         "import_before_loading": ["torchvision"],
                                         "operators": ["torchvision::roi_align"]}, indent=1),
        "README.txt": LOADING,
    }
    if ckpt.cfg_text is not None:
        files["detectron_cfg.yaml"] = ckpt.cfg_text
    return files


def script(ckpt: ConvertedCheckpoint, network=None):
    """The scripted `Detector` for a checkpoint: the very module `predict` runs, weights frozen."""
    import torch

    from gnconvert.inference import Detector

    network = loaded_network(ckpt) if network is None else network
    detector = Detector(network, ckpt.arch).eval()
    for p in detector.parameters():
        p.requires_grad_(False)
    return torch.jit.script(detector)


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    """Script the pipeline and save it, with its extra files, to paths[0] (serialised in memory
    first: torch.jit.save writing a file itself aborts the process on a full disk)."""
    import io

    import torch

    buf = io.BytesIO()
    try:
        torch.jit.save(script(ckpt, network), buf, _extra_files=extra_files(ckpt))
    except (RuntimeError, NotImplementedError, AttributeError) as e:  # a torch that no longer scripts
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"torch {torch.__version__} could not make a TorchScript archive ({first}); "
                         "use --to export (a torch.export program of the same pipeline) instead") from None
    write_file(paths[0], buf.getvalue())


def run_archive(path, image_bgr) -> Dict[str, np.ndarray]:
    """Load an archive with torch.jit alone and run it on one BGR uint8 array -> numpy outputs."""
    import torch
    import torchvision  # noqa: F401  (registers torchvision::roi_align for the archive)

    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = module(torch.from_numpy(image_bgr))
    return {k: v.numpy() for k, v in out.items()}


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package).split("+")[0]


def operators(path) -> List[str]:
    """The `namespace::name` operators the archive's code calls, beyond aten and prim."""
    import re
    import zipfile

    found = set()
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".py") and "/code/" in f"/{name}":
                text = z.read(name).decode("utf-8", "replace")
                found |= set(re.findall(r"(?<![\w.])ops\.(\w+)\.(\w+)\(", text))
    return sorted(f"{ns}::{op}" for ns, op in found if ns not in ("aten", "prim"))


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None,
           reference: Optional[Detections] = None, image=BUNDLED_IMAGE) -> VerifyReport:
    """Run the written archive on `image` and compare with the in-process `Detector`."""
    from gnconvert.inference.preprocess import load_image

    network = loaded_network(ckpt) if network is None else network
    im = load_image(image)
    if reference is None:
        reference = reference_detections(network, ckpt.arch, im)
    out = run_archive(paths[0], im)
    report = VerifyReport("torchscript", paths[0], f"{image_name(image)} (whole pipeline)")
    foreign = [op for op in operators(paths[0]) if op.split("::")[0] not in _ALLOWED_OP_NAMESPACES]
    if foreign:
        report.problems.append(f"the archive calls {', '.join(foreign)}, which torch + torchvision cannot load")
    return compare_detections(report, reference, out["boxes"], out["scores"], out["classes"], out["mask_probs"],
                              out["masks"])
