"""gnconvert: Detectron's GN Mask R-CNN checkpoints in PyTorch, with Detectron's numerics.

    import gnconvert, cv2
    model = gnconvert.load("48616381")              # or a Detectron .pkl / converted .safetensors
    dets = model.predict(cv2.imread("image.jpg"))   # boxes, scores, classes, RLE masks

Heavy modules (torch) are imported on first use so `gnconvert list` stays fast.
"""
__version__ = "0.1.0"


__all__ = ["load", "to_torchvision", "to_timm", "use_group_norm_kernel", "Detections", "__version__"]


def load(source, device="auto", config=None, opts=None, precision="fp32", compile=False, allow_slow=False):
    """A ready model for SOURCE: a model id, a Detectron `.pkl`, or a converted `.safetensors`.

    A Mask R-CNN model's `predict` returns `Detections`; an ImageNet backbone's `predict`
    returns its top-5 ImageNet classes.  precision="fp32" without compile is the exact mode
    (Detectron's numerics); "bf16", "tf32" (CUDA) and compile=True are faster, measured, not
    exact, and refused where this machine would run them slower (allow_slow=True runs them
    anyway).  See `gnconvert.api.load` for `device` and `opts`."""
    from gnconvert.api import load as _load

    return _load(source, device=device, config=config, opts=opts, precision=precision, compile=compile,
                 allow_slow=allow_slow)


def to_torchvision(model):
    """torchvision's own model holding `model`'s weights: a `MaskRCNN` built from torchvision's parts with
    Detectron's settings (labels are COCO category ids), or a ResNet with GroupNorm for an ImageNet
    backbone; RGB input in 0..1.  `model`: what `load` returns, or a source it takes."""
    from gnconvert.export.torchvision_api import to_torchvision as _to_torchvision

    return _to_torchvision(model)


def to_timm(model):
    """timm's ResNet with GroupNorm (resnet50_gn; resnet101 with norm_layer="groupnorm") holding an ImageNet
    GN backbone's weights (needs `pip install 'gnconvert[timm]'`)."""
    from gnconvert.export.torchvision_api import to_timm as _to_timm

    return _to_timm(model)


def use_group_norm_kernel(model, kernel=None):
    """Swap `model`'s nn.GroupNorm modules for gnconvert's Triton-kernel GroupNorm (CUDA forward and
    backward; PyTorch's elsewhere), weights and state-dict keys unchanged; returns how many."""
    from gnconvert.finetune import use_group_norm_kernel as _swap

    return _swap(model, kernel)


def __getattr__(name):
    if name == "Detections":
        from gnconvert.results.detections import Detections

        return Detections
    raise AttributeError(f"module 'gnconvert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + ["Detections"])
