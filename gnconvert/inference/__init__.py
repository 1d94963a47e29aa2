"""Detectron's test-time pipeline in torch: pre-processing, anchors, proposals, RoI
pooling, box and mask post-processing, and the `Detector` module that runs them."""
from gnconvert.inference.detector import Detector  # noqa: F401
