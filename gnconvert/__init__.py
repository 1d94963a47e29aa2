"""gnconvert: Detectron's GN Mask R-CNN checkpoints in PyTorch, with Detectron's numerics.

    import gnconvert, cv2
    model = gnconvert.load("48616381")              # or a Detectron .pkl / converted .safetensors
    dets = model.predict(cv2.imread("image.jpg"))   # boxes, scores, classes, RLE masks

Heavy modules (torch) are imported on first use so `gnconvert list` stays fast.
"""
__version__ = "0.1.0"

__all__ = ["load", "Detections", "__version__"]


def load(source, device="auto", config=None, opts=None):
    """A ready model for SOURCE: a model id, a Detectron `.pkl`, or a converted `.safetensors`.

    A Mask R-CNN model's `predict` returns `Detections`; an ImageNet backbone's `predict`
    returns its top-5 ImageNet classes.  See `gnconvert.api.load` for `device` and `opts`."""
    from .api import load as _load

    return _load(source, device=device, config=config, opts=opts)


def __getattr__(name):
    if name == "Detections":
        from .detections import Detections

        return Detections
    raise AttributeError(f"module 'gnconvert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + ["Detections"])
