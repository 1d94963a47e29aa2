"""gnconvert: Detectron's GN Mask R-CNN checkpoints in PyTorch, with Detectron's numerics."""
__version__ = "0.1.0"
