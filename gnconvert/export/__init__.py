"""Artifacts that reproduce a converted model outside gnconvert, each verified before it appears.

    from gnconvert.export import export
    result = export(load_source("model.pkl"), "torchscript", "model.pt")
    print(result.report.format())

Targets (one module each, with `outputs`, `write`, `verify`):
- export: the whole Detectron test pipeline as a torch.export program (any image size);
- aoti: that program compiled by AOTInductor into one package (Python or C++, no Python model code);
- torchscript: the whole pipeline as a TorchScript archive (deprecated by PyTorch; kept while it runs);
- onnx: body + FPN + RPN head, box head, mask head (three files, opset 17);
- safetensors: the weights under our names with the JSON metadata header;
- detectron: a Detectron `.pkl` (same blob names, shapes, cfg text);
- timm, torchvision: the libraries' own models' state dicts (`to_timm`, `to_torchvision`).

Every file is written under a temporary name in the output's folder, checked
(`verify`), and only then renamed into place: a failed write or a failed check
leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import time
from dataclasses import dataclass
from typing import List, Optional

from gnconvert.errors import ParityError, UsageError
from gnconvert.export.common import BUNDLED_IMAGE, check_output, loaded_network, writing
from gnconvert.export.self_check import VerifyReport

TARGETS = ("export", "aoti", "torchscript", "onnx", "safetensors", "detectron", "timm", "torchvision")
DEVICE_TARGETS = ("export", "aoti")  # traced or compiled for a device; the others are device-free
# not named like the packages they import
_MODULES = {"export": "exported_program", "timm": "to_timm", "torchvision": "to_torchvision"}


@dataclass
class ExportResult:
    target: str
    paths: List[str]
    export_seconds: float
    report: Optional[VerifyReport]
    verify_seconds: float


def target_module(target: str):
    if target not in TARGETS:
        raise UsageError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{_MODULES.get(target, target)}")


def output_paths(target: str, output) -> List[str]:
    """The files `target` writes for `-o output`, each checked to be writable."""
    module = target_module(target)
    paths = module.outputs(output) if hasattr(module, "outputs") else [os.fspath(output)]
    return [check_output(p) for p in paths]


def export(ckpt, target: str, output, verify: bool = True, reference=None, image=BUNDLED_IMAGE,
           network=None, device: str = "cpu") -> ExportResult:
    """Write `ckpt` as `target` to `output` (plus siblings for onnx), verified unless verify=False.

    device: where an export or aoti artifact runs ("cpu", "cuda"); the other targets are device-free.

    reference: the in-process `Detector`'s Detections on `image`, if already computed.
    Raises ParityError (and writes nothing) when the artifact does not reproduce the model.
    """
    module = target_module(target)
    if target == "onnx":
        module.require_onnx()
    on_device = {"device": device} if target in DEVICE_TARGETS else {}
    if device != "cpu" and not on_device:
        raise UsageError(f"--device is for --to export and --to aoti; {target} artifacts are device-free")
    paths = output_paths(target, output)
    network = getattr(module, "loaded_network", loaded_network)(ckpt) if network is None else network
    if getattr(network, "bf16_prepared", False):
        raise UsageError("this network was set up for the bf16 fast mode; exports carry the "
                         "exact model: export from the checkpoint (gnconvert export SOURCE), not from a fast model")
    report, verify_seconds = None, 0.0
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(writing(p)) for p in paths]
        t0 = time.perf_counter()
        module.write(ckpt, temps, network, **on_device)
        export_seconds = time.perf_counter() - t0
        if verify:
            t0 = time.perf_counter()
            report = module.verify(ckpt, temps, network, reference, image, **on_device)
            verify_seconds = time.perf_counter() - t0
            report.artifact = ", ".join(paths)
            if not report.passed:
                raise ParityError(f"the exported {target} artifact does not reproduce the model, so nothing was "
                                  f"written: {'; '.join(report.format().splitlines()[1:])}")
    return ExportResult(target, paths, export_seconds, report, verify_seconds)
