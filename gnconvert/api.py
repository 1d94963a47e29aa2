"""`gnconvert.load`: from whatever the user has to a ready model.

SOURCE may be a catalog model id, a Detectron `.pkl`, or a converted
`.safetensors`; the architecture record inside decides what gets built: a
`Detector` (Mask R-CNN) or a `Classifier` (ImageNet backbone), both `LoadedModel`s
(gnconvert.inference.loaded).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

from gnconvert.architecture import Kind
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.runtime import RunMode, Runtime, resolve_device

if TYPE_CHECKING:
    from gnconvert.inference.classifier import Classifier
    from gnconvert.inference.detector import Detector

__all__ = ["build_model", "load", "resolve_device"]


def build_model(ckpt: ConvertedCheckpoint, device: Union[str, torch.device, None] = "cpu",
                mode: Optional[RunMode] = None, *, allow_slow: bool = False,
                runtime: Optional[Runtime] = None) -> Union[Detector, Classifier]:
    """A `Detector` (Mask R-CNN) or a `Classifier` (ImageNet backbone) with the checkpoint's weights, in
    eval mode, built for `runtime` (or the one `device`, `mode` and `allow_slow` resolve to)."""
    from gnconvert.inference.classifier import Classifier
    from gnconvert.inference.detector import Detector
    from gnconvert.model import build_network
    from gnconvert.model.norm import set_group_norm_kernel

    if runtime is None:
        runtime = Runtime.resolve(device, mode or RunMode(), allow_slow=allow_slow)
    if ckpt.arch.kind == Kind.CLASSIFIER and not runtime.mode.exact:
        raise UsageError(f"precision/compile modes are for Mask R-CNN models; {runtime.mode.name} was asked for an "
                         "ImageNet backbone, which runs in fp32 only")
    network = build_network(ckpt.arch)
    network.load_state_dict(ckpt.torch_state_dict(), strict=True)
    set_group_norm_kernel(network, runtime.group_norm.kernel)
    network = network.eval().to(runtime.device)
    kind = Classifier if ckpt.arch.kind == Kind.CLASSIFIER else Detector
    return kind(network, ckpt.arch, runtime, dict(ckpt.provenance)).eval()


def load(source, device: Union[str, torch.device, None] = "auto", config: Optional[str] = None,
         opts: Optional[Sequence] = None, precision: str = "fp32", compile: bool = False, allow_slow: bool = False,
         runtime: Optional[Runtime] = None) -> Union[Detector, Classifier]:
    """A ready model for SOURCE (model id, Detectron `.pkl`, or converted `.safetensors`).

    device: "auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N".  opts: Detectron
    test settings to override, as ("KEY", "VALUE") pairs or "KEY=VALUE" strings, e.g.
    ["TEST.SCALE=600"] (checked as Detectron checks its keys).  precision ("fp32", the exact
    default; "bf16"; "tf32" on CUDA) and compile (torch.compile the network) choose a fast mode
    instead of Detectron's exact numerics (gnconvert.runtime.mode); a fast mode this machine would
    run slower than the exact one is refused unless allow_slow.  runtime: all of that, resolved.

    >>> model = gnconvert.load("48616381", device="cuda")
    >>> dets = model.predict(cv2.imread("image.jpg"))   # gnconvert.Detections
    """
    from gnconvert.checkpoint.sources import load_source

    if runtime is None:  # fail before a long download or conversion
        runtime = Runtime.resolve(device, precision, compile, allow_slow)
        for message in runtime.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return build_model(load_source(source, config_path=config, opts=opts), runtime=runtime)
