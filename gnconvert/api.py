"""`gnconvert.load`: from whatever the user has to a ready model.

SOURCE may be a catalog model id, a Detectron `.pkl`, or a converted
`.safetensors`; the architecture record inside decides what gets built.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from gnconvert.architecture import Kind
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.inference.modes import RunMode


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """'auto' (or None) picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def build_model(ckpt: ConvertedCheckpoint, device: Union[str, torch.device, None] = "cpu",
                mode: Optional[RunMode] = None):
    """A `Detector` (Mask R-CNN) or a `ResNetClassifier` (ImageNet backbone) with the checkpoint's weights,
    in eval mode on `device`, its network run in `mode` (default: the exact one)."""
    from gnconvert.inference import modes
    from gnconvert.inference.detector import Detector
    from gnconvert.model import build_network

    dev = resolve_device(device)
    mode = mode or modes.EXACT
    mode.check_device(dev)
    if ckpt.arch.kind == Kind.CLASSIFIER and not mode.exact:
        raise UsageError(f"precision/compile modes are for Mask R-CNN models; {mode.name} was asked for an "
                         "ImageNet backbone, which runs in fp32 only")
    network = build_network(ckpt.arch)
    network.load_state_dict(ckpt.torch_state_dict(), strict=True)
    model = network if ckpt.arch.kind == Kind.CLASSIFIER else Detector(network, ckpt.arch)
    model.provenance = dict(ckpt.provenance)  # type: ignore[assignment]  # for reports
    model = model.eval().to(dev)
    if isinstance(model, Detector):
        model.set_mode(mode)
    return model


def load(source, device: Union[str, torch.device, None] = "auto", config: Optional[str] = None,
         opts: Optional[Sequence] = None, precision: str = "fp32", compile: bool = False):
    """A ready model for SOURCE (model id, Detectron `.pkl`, or converted `.safetensors`).

    device: "auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N".  opts: Detectron
    test settings to override, as ("KEY", "VALUE") pairs or "KEY=VALUE" strings, e.g.
    ["TEST.SCALE=600"] (checked as Detectron checks its keys).  precision ("fp32", the exact
    default; "bf16"; "tf32" on CUDA) and compile (torch.compile the network) choose a fast mode
    instead of Detectron's exact numerics (see gnconvert.inference.modes).

    >>> model = gnconvert.load("48616381", device="cuda")
    >>> dets = model.predict(cv2.imread("image.jpg"))   # gnconvert.Detections
    """
    from gnconvert.checkpoint.sources import load_source

    dev = resolve_device(device)  # fail before a long download or conversion
    mode = RunMode.of(precision, compile)
    mode.check_device(dev)
    return build_model(load_source(source, config_path=config, opts=opts), dev, mode)
