"""`--to torchvision`: torchvision's own models with the converted weights.

- An ImageNet GN backbone -> the state dict `torchvision.models.resnet50(norm_layer=lambda c:
  nn.GroupNorm(32, c))` (or resnet101) loads with strict=True; OUT.json holds the transforms
  (resize 256, crop 224, bilinear, RGB mean/std for input in 0..1).
- A Mask R-CNN -> the state dict of `detectron_maskrcnn(...)` (`torchvision_builder`, the README's
  torch + torchvision-only builder: torchvision's MaskRCNN, ResNet, FPN, heads and predictors with
  Detectron's settings); OUT.json holds the builder call, the 91 COCO labels and the input convention.
  The check compares every network part with ours on the bundled image (float noise), the builder's
  settings with the checkpoint's, and prints how many of our (Detectron's) detections torchvision's
  pipeline reproduces: not all, since torchvision has no "+1" RoIAlign and decodes in resized pixels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from gnconvert.architecture import Kind
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.export import backbone_check
from gnconvert.export.common import BUNDLED_IMAGE, built_network
from gnconvert.export.self_check import VerifyReport
from gnconvert.export.torchvision_api import CROP, RESIZE, rgb_mean_std, torchvision_resnet
from gnconvert.export.torchvision_weights import (
    RGB_MEANS_NOTE,
    builder_call,
    builder_kwargs,
    category_names,
    check_supported,
    torchvision_state_dict,
)

outputs = backbone_check.outputs


def loaded_network(ckpt: ConvertedCheckpoint):
    """Our network (MaskRCNNNetwork or ResNetClassifier) with the checkpoint's weights, in eval mode."""
    check_supported(ckpt.arch)
    return built_network(ckpt)


def sidecar(ckpt: ConvertedCheckpoint) -> Dict[str, Any]:
    from gnconvert import __version__

    arch = ckpt.arch
    mean, std = rgb_mean_std(arch)
    common = {"input": "RGB float in 0..1", "note": RGB_MEANS_NOTE, "exported_by": f"gnconvert {__version__}",
              "provenance": dict(ckpt.provenance)}
    if arch.kind == Kind.CLASSIFIER:
        return {"format": "gnconvert-torchvision-resnet", **common,
                "build": f"torchvision.models.resnet{arch.depth}(norm_layer=lambda c: torch.nn.GroupNorm(32, c))",
                "transforms": {"resize_size": RESIZE, "crop_size": CROP, "interpolation": "bilinear",
                               "mean": list(mean), "std": list(std)}}
    return {"format": "gnconvert-torchvision-maskrcnn", **common,
            "build": builder_call(arch), "builder_kwargs": builder_kwargs(arch), "image_mean": list(mean),
            "image_std": list(std), "labels": "COCO category ids (torchvision's 91-entry COCO layout)",
            "categories": category_names(),
            "boxes": "x1, y1, x2, y2 with x2, y2 the right/bottom edges (Detectron's inclusive x2 + 1)",
            "test_settings": arch.to_dict()["test"]}


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    backbone_check.write_state_and_sidecar(paths, torchvision_state_dict(ckpt.state_dict, ckpt.arch), sidecar(ckpt))


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None, reference: Optional[Any] = None,
           image=BUNDLED_IMAGE) -> VerifyReport:
    """Reload with torch + torchvision alone, load strictly, compare (see the module docstring)."""
    network = loaded_network(ckpt) if network is None else network
    if ckpt.arch.kind == Kind.CLASSIFIER:
        return backbone_check.verify_backbone("torchvision", paths, network, ckpt.arch, torchvision_resnet, image)
    from gnconvert.export.maskrcnn_check import verify_maskrcnn

    return verify_maskrcnn(ckpt, paths, network, reference, image)
