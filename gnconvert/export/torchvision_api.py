"""`gnconvert.to_torchvision(model)` and `gnconvert.to_timm(model)`: our models as the libraries' own.

A Mask R-CNN becomes torchvision's `MaskRCNN` (`torchvision_builder.detectron_maskrcnn`); an ImageNet
GN backbone becomes `torchvision.models.resnet{50,101}(norm_layer=GroupNorm(32))` or timm's
`resnet50_gn` (timm registers no R-101 GN: `resnet101` with `norm_layer="groupnorm"`).  All take
RGB in 0..1 normalised with `TRANSFORMS`' mean and std (see `torchvision_weights`).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from gnconvert.architecture import REFERENCE_ARCHITECTURES, Architecture, Kind
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError

# timm model name and extra create_model arguments per depth
TIMM_MODELS: Dict[int, Tuple[str, Dict[str, Any]]] = {50: ("resnet50_gn", {}), 101: ("resnet101", {"norm_layer": "groupnorm"})}
# Detectron's ImageNet test crop (ResNetClassifier.predict): short side 256, bilinear, central 224
CROP, RESIZE = 224, 256


def rgb_mean_std(arch: Architecture) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """torchvision/timm's mean and std (RGB, for input in 0..1) that reproduce Detectron's BGR 0..255 minus means."""
    return tuple(m / 255.0 for m in reversed(arch.pixel_means)), (1.0 / 255.0,) * 3


def checkpoint_of(model: Any) -> ConvertedCheckpoint:
    """A ConvertedCheckpoint from what a user holds: a loaded Detector or ResNetClassifier, a
    ConvertedCheckpoint, or a source (model id, .pkl, converted .safetensors)."""
    import os

    from gnconvert.model import ResNetClassifier

    if isinstance(model, ConvertedCheckpoint):
        return model
    if isinstance(model, (str, os.PathLike)):
        from gnconvert.checkpoint.sources import load_source

        return load_source(os.fspath(model))
    state = lambda net: {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}  # noqa: E731
    if hasattr(model, "network") and isinstance(getattr(model, "arch", None), Architecture):  # a Detector
        if getattr(model, "mode", None) is not None and not model.mode.exact:
            raise UsageError(f"this model runs in the fast mode {model.mode.name}; load it in the exact mode "
                             "(precision fp32, no compile) to convert it")
        return ConvertedCheckpoint(state_dict=state(model.network), arch=model.arch)
    if isinstance(model, ResNetClassifier):
        blocks = len(list(model.body.get_submodule("res4").children()))
        depth = {6: 50, 23: 101}.get(blocks)
        if depth is None:
            raise UsageError(f"a ResNet classifier with {blocks} res4 blocks is neither R-50 nor R-101")
        arch = REFERENCE_ARCHITECTURES[f"ImageNet_R-{depth}-GN"]
        return ConvertedCheckpoint(state_dict=state(model), arch=arch)
    raise UsageError(f"cannot convert a {type(model).__name__}; pass a model from gnconvert.load, a "
                     "ConvertedCheckpoint, or a model id / .pkl / .safetensors path")


def torchvision_resnet(depth: int, num_classes: int = 1000):
    """`torchvision.models.resnet{depth}(norm_layer=lambda c: nn.GroupNorm(32, c))`, as the README shows."""
    import torchvision
    from torch import nn

    return getattr(torchvision.models, f"resnet{depth}")(norm_layer=lambda c: nn.GroupNorm(32, c),
                                                         num_classes=num_classes)


def require_timm():
    try:
        import timm
    except ImportError:
        raise UsageError("--to timm needs the timm package: pip install 'gnconvert[timm]'") from None
    return timm


def timm_resnet(depth: int, num_classes: int = 1000):
    """`timm.create_model(name, pretrained=False, num_classes=..., **args)` for Detectron's GN ResNet."""
    name, args = TIMM_MODELS[depth]
    return require_timm().create_model(name, pretrained=False, num_classes=num_classes, **args)


def _loaded(module, ckpt: ConvertedCheckpoint):
    import torch

    from gnconvert.export.torchvision_weights import torchvision_state_dict

    state = {k: torch.from_numpy(v) for k, v in torchvision_state_dict(ckpt.state_dict, ckpt.arch).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def _device(model: Any):
    import torch

    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def to_torchvision(model: Any):
    """torchvision's own model with our weights: `MaskRCNN` for a Mask R-CNN, `ResNet` for an
    ImageNet backbone; in eval mode, on the model's device.  Labels are COCO category ids."""
    from gnconvert.export.torchvision_builder import detectron_maskrcnn
    from gnconvert.export.torchvision_weights import builder_kwargs, check_supported

    ckpt = checkpoint_of(model)
    check_supported(ckpt.arch)
    if ckpt.arch.kind == Kind.CLASSIFIER:
        tv = torchvision_resnet(ckpt.arch.depth, ckpt.arch.num_classes)
    else:
        tv = detectron_maskrcnn(**builder_kwargs(ckpt.arch))
    return _loaded(tv, ckpt).to(_device(model))


def to_timm(model: Any):
    """timm's ResNet with GroupNorm holding an ImageNet GN backbone's weights, in eval mode."""
    ckpt = checkpoint_of(model)
    if ckpt.arch.kind != Kind.CLASSIFIER:
        raise UsageError("timm takes the ImageNet backbones (R-50-GN.pkl, R-101-GN.pkl); for a Mask R-CNN use "
                         "gnconvert.to_torchvision / --to torchvision")
    return _loaded(timm_resnet(ckpt.arch.depth, ckpt.arch.num_classes), ckpt).to(_device(model))
