"""PyTorch modules for Detectron's ResNet-FPN Mask R-CNN and its ImageNet backbones."""
from __future__ import annotations

from torch import nn

from gnconvert.architecture import Architecture, Kind
from gnconvert.model.classifier import ResNetClassifier
from gnconvert.model.network import MaskRCNNNetwork

__all__ = ["build_network", "MaskRCNNNetwork", "ResNetClassifier"]


def build_network(arch: Architecture) -> nn.Module:
    """MaskRCNNNetwork or ResNetClassifier, by `arch.kind`; parameters uninitialised for loading."""
    return ResNetClassifier(arch) if arch.kind == Kind.CLASSIFIER else MaskRCNNNetwork(arch)
