"""PyTorch modules for Detectron's ResNet-FPN Mask R-CNN and its ImageNet backbones."""
from __future__ import annotations

from torch import nn

from ..architecture import Architecture
from .classifier import ResNetClassifier
from .network import MaskRCNNNetwork

__all__ = ["build_network", "MaskRCNNNetwork", "ResNetClassifier"]


def build_network(arch: Architecture) -> nn.Module:
    """MaskRCNNNetwork or ResNetClassifier, by `arch.kind`; parameters uninitialised for loading."""
    if arch.kind == "mask_rcnn":
        return MaskRCNNNetwork(arch)
    if arch.kind == "classifier":
        return ResNetClassifier(arch)
    raise ValueError(f"unknown architecture kind {arch.kind!r}")
