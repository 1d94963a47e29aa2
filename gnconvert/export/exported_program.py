"""`--to export`: the whole Detectron test pipeline as a `torch.export` program (`.pt2`).

The program is the very `Detector` that `predict` runs, traced once with a dynamic image height
and width (MIN_SIDE..MAX_SIDE pixels each) and data-dependent proposal and detection counts
(the value-dependent steps trace through gnconvert.inference.exportable).  It holds only aten,
torchvision and higher-order ops, so torch + torchvision load and run it:

    import torch, torchvision        # torchvision registers torchvision::roi_align
    model = torch.export.load("model.pt2").module()
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR

Before it is written, the program runs on the check images (the bundled one and a crop of it of
another size and aspect) and must give the eager `Detector`'s outputs bit for bit.
"""
from __future__ import annotations

import io
from typing import Dict, List, Tuple

import numpy as np

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network, write_file
from gnconvert.export.self_check import VerifyReport, image_name

MIN_SIDE, MAX_SIDE = 32, 8192  # the image sides the program accepts (torch.export.Dim bounds)
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs", "masks")
_ALLOWED_OP_NAMESPACES = {"aten", "torchvision", "higher_order"}
LOADING = f"""This is a torch.export program of Detectron's Mask R-CNN test pipeline (gnconvert export --to export).
It needs torch and torchvision, and torchvision must be imported before loading it:

    import torch, torchvision        # torchvision registers torchvision::roi_align
    model = torch.export.load("model.pt2").module()
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR

Any image of {MIN_SIDE}..{MAX_SIDE} pixels a side; one program for every size.
On CUDA, for Detectron's float32 numerics, set torch.backends.cudnn.allow_tf32 = False first.
"""


def check_images(image=BUNDLED_IMAGE) -> List[Tuple[str, np.ndarray]]:
    """The images an exported program is checked on: `image` and its left 60% (another size and
    aspect ratio, so the check also proves the sizes are not baked in)."""
    from gnconvert.inference.preprocess import load_image

    im = load_image(image)
    crop = np.ascontiguousarray(im[:, : max(MIN_SIDE, int(im.shape[1] * 0.6))])
    name = image_name(image)
    return [(name, im), (f"{name} cropped to {crop.shape[1]}x{crop.shape[0]}", crop)]


def detector(ckpt: ConvertedCheckpoint, network=None, device: str = "cpu"):
    """The eager `Detector` an export traces: exact fp32, PyTorch's GroupNorm (the program must
    not call gnconvert's own op), weights frozen."""

    from gnconvert.inference import Detector
    from gnconvert.runtime import Runtime

    network = loaded_network(ckpt) if network is None else network
    det = Detector(network.to(device), ckpt.arch, Runtime.resolve(device)).eval()
    for p in det.parameters():
        p.requires_grad_(False)
    return det


def trace(ckpt: ConvertedCheckpoint, network=None, device: str = "cpu", image=BUNDLED_IMAGE):
    """`torch.export.export` of the pipeline, H and W dynamic; fails with one line naming the
    torch version if this torch cannot trace it."""
    import torch

    det = detector(ckpt, network, device)
    example = torch.from_numpy(check_images(image)[0][1]).to(device)
    dims = {0: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            1: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    try:
        with det.runtime.numerics():
            return torch.export.export(det, (example,), dynamic_shapes=({0: dims[0], 1: dims[1]},), strict=False)
    except Exception as e:  # noqa: BLE001  (any tracing failure: report it in one line)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"torch {torch.__version__} could not export the pipeline ({type(e).__name__}: "
                         f"{first[:200]}); use --to torchscript, or a torch >= 2.9") from None


def extra_files(ckpt: ConvertedCheckpoint, loading: str) -> Dict[str, str]:
    """The records saved beside the program (what made it, its contract, how to load it)."""
    from gnconvert.export.torchscript import extra_files as torchscript_files

    files = torchscript_files(ckpt)
    files["README.txt"] = loading
    files["dynamic_shapes.json"] = (f'{{"image": {{"0": "height in [{MIN_SIDE}, {MAX_SIDE}]", '
                                    f'"1": "width in [{MIN_SIDE}, {MAX_SIDE}]", "2": 3}}}}')
    return files


def operators(program) -> List[str]:
    """The `namespace::name` operators the program calls, outside aten (loop bodies included)."""
    import torch

    found = set()
    for module in program.graph_module.modules():
        for node in module.graph.nodes if isinstance(module, torch.fx.GraphModule) else []:
            if isinstance(node.target, torch._ops.OpOverload):
                found.add(f"{node.target.namespace}::{node.target._opname}")
            elif isinstance(node.target, torch._ops.HigherOrderOperator):
                found.add(f"higher_order::{node.target.name()}")
    return sorted(op for op in found if not op.startswith("aten::"))


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None, device: str = "cpu") -> None:
    """Trace and save the program (serialised in memory first, then written under the temporary name)."""
    import torch

    buf = io.BytesIO()
    torch.export.save(trace(ckpt, network, device), buf, extra_files=extra_files(ckpt, LOADING))
    write_file(paths[0], buf.getvalue())


def compare_outputs(report: VerifyReport, name: str, reference: Dict, out: Dict) -> None:
    """Bit-for-bit comparison of one image's five outputs; the largest differences are recorded."""
    import torch

    for key in OUTPUT_NAMES:
        a, b = reference[key], out[key].to(reference[key].device)
        if a.shape != b.shape or a.dtype != b.dtype:
            report.problems.append(f"{name}: {key} {tuple(b.shape)} {b.dtype}, the eager model gives "
                                   f"{tuple(a.shape)} {a.dtype}")
            continue
        diff = 0.0 if a.numel() == 0 else float((a.double() - b.double()).abs().max())
        report.differences[key] = max(report.differences.get(key, 0.0), diff)  # over all check images
        report.tolerances[key] = 0.0
        if not torch.equal(a, b) and diff == 0.0:  # NaNs in the same places compare unequal
            report.problems.append(f"{name}: {key} differs")


def verify_with(run, ckpt: ConvertedCheckpoint, target: str, path: str, network=None,
                image=BUNDLED_IMAGE, device: str = "cpu") -> VerifyReport:
    """Run `run(image_tensor) -> outputs` on the check images and compare with the eager Detector."""
    import torch

    det = detector(ckpt, network, device)
    images = check_images(image)
    report = VerifyReport(target, path, ", ".join(n for n, _ in images) + " (whole pipeline, bit for bit)")
    with det.runtime.numerics(), torch.no_grad():
        for name, im in images:
            x = torch.from_numpy(im).to(device)
            reference = det(x)
            report.detections = (report.detections or 0) + int(reference["scores"].shape[0])
            compare_outputs(report, name, reference, run(x))
    return report


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None, reference=None,
           image=BUNDLED_IMAGE, device: str = "cpu") -> VerifyReport:
    """Load the written program with torch alone and check it on the check images."""
    import torch
    import torchvision  # noqa: F401

    program = torch.export.load(paths[0])
    report = verify_with(program.module(), ckpt, "export", paths[0], network, image, device)
    foreign = [op for op in operators(program) if op.split("::")[0] not in _ALLOWED_OP_NAMESPACES]
    if foreign:
        report.problems.append(f"the program calls {', '.join(foreign)}, which torch + torchvision cannot load")
    return report
