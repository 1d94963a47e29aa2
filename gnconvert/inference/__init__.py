"""Detectron's test-time pipeline in torch: pre-processing, anchors, proposals, RoI
pooling, box and mask post-processing, and the `Detector` module that runs them.

`Detector` is imported on first use, so that importing one step (`modes`, `preprocess`,
`sorting`) to check an option does not load the whole pipeline and torchvision.
"""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gnconvert.inference.detector import Detector  # noqa: F401


def __getattr__(name: str):
    if name == "Detector":
        from gnconvert.inference.detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
