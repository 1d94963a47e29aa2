"""Detectron's test-time pipeline around the network: preprocessing, anchors,
proposals, RoI pooling, box and mask post-processing, and the `Detector` that
strings them together."""
from .detector import Detector, ImageFeatures, Intermediates  # noqa: F401
