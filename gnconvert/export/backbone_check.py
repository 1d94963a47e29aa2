"""What the timm and torchvision backbone exports share: the weights file, its sidecar JSON, the check.

The weights are written as `.safetensors` when OUT ends so (what timm and the Hugging Face hub
load), else as a `torch.save` state dict of plain tensors (loadable with `weights_only=True`).
The check reloads the written files with the target library alone, runs them on Detectron's
ImageNet crop of the bundled image fed the library's way (RGB in 0..1, normalised with the
sidecar's mean and std) and compares the logits with ours on Detectron's input (BGR minus means).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping

import numpy as np

from gnconvert.errors import UsageError
from gnconvert.export.common import write_file
from gnconvert.export.self_check import VerifyReport, compare_arrays, image_name

LOGIT_TOLERANCE = 1e-4  # of max |logit|: float32 noise between two implementations of the same network


def outputs(output) -> List[str]:
    """OUT and its sidecar JSON (OUT with the extension replaced by .json)."""
    output = os.fspath(output)
    stem, ext = os.path.splitext(output)
    if ext.lower() == ".json":
        raise UsageError(f"output {output} ends in .json, the name of the sidecar file; name the weights "
                         "e.g. model.safetensors or model.pth")
    return [output, f"{stem}.json"]


def is_safetensors(path) -> bool:
    """Whether OUT (or the temporary name `writing` gave it) is to hold safetensors."""
    from gnconvert.atomic import final_path_of

    return str(final_path_of(path)).lower().endswith(".safetensors")


def serialise_state(state: Mapping[str, np.ndarray], safetensors: bool) -> bytes:
    """The state dict as safetensors bytes or torch.save bytes."""
    import io

    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
    if safetensors:
        from safetensors.torch import save

        return save(tensors, metadata={"format": "pt"})
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def write_state_and_sidecar(paths: List[str], state: Mapping[str, np.ndarray], sidecar: Dict[str, Any]) -> None:
    """paths: the temporary names of OUT and of its JSON."""
    write_file(paths[0], serialise_state(state, is_safetensors(paths[0])))
    write_file(paths[1], (json.dumps(sidecar, indent=1) + "\n").encode("utf-8"))


def read_state(path: str):
    """What the user's library reads back: safetensors' loader or torch.load(weights_only=True)."""
    import torch

    if is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def check_logits(report: VerifyReport, network, theirs, arch, mean, std, image) -> None:
    """Logits of `theirs` (RGB in 0..1, normalised with mean/std) vs ours (BGR minus means) on the crop."""
    import torch

    from gnconvert.inference.classifier import detectron_crop
    from gnconvert.inference.preprocess import load_image

    crop = detectron_crop(load_image(image))
    ours_in = torch.from_numpy((crop.astype(np.float32) - np.array(arch.pixel_means, np.float32)).transpose(2, 0, 1))
    rgb = torch.from_numpy(crop[:, :, ::-1].transpose(2, 0, 1).copy()).to(torch.float32) / 255.0
    theirs_in = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        expected = network(ours_in[None]).numpy()
        got = theirs(theirs_in[None].to(torch.float32)).numpy()
    compare_arrays(report, "logits", got, expected, LOGIT_TOLERANCE)
    report.checked_on = f"{image_name(image)} (Detectron's 224 crop, logits)"


def read_sidecar(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def verify_backbone(target: str, paths: List[str], network, arch, build: Callable[[int, int], Any],
                    image) -> VerifyReport:
    """Reload OUT and its JSON, load the weights strictly into `build(depth, num_classes)`, compare logits."""
    report = VerifyReport(target, paths[0], image_name(image))
    mean, std = _mean_std(read_sidecar(paths[1]))
    model = build(arch.depth, arch.num_classes)
    try:
        model.load_state_dict(read_state(paths[0]), strict=True)
    except RuntimeError as e:
        report.problems.append(f"the weights do not load strictly: {str(e).splitlines()[0]}")
        return report
    check_logits(report, network, model.eval(), arch, mean, std, image)
    return report


def _mean_std(sidecar: Dict[str, Any]):
    cfg = sidecar.get("pretrained_cfg") or sidecar.get("transforms") or {}
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
