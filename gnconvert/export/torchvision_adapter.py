"""torchvision's MaskRCNN behind the API our `Detector` offers verify: `predict_batch(images) -> [Detections]`.

So `gnconvert verify --backend torchvision` and the golden agreement measurement judge the exported
torchvision model with the same evaluation as our own.  Conversions at the boundary, nothing else:
BGR uint8 in -> torchvision's RGB in 0..1; its boxes (continuous edges) -> Detectron's inclusive
x2, y2 (minus one); COCO category ids -> Detectron's contiguous 1..80; its pasted mask
probabilities -> binary masks (> TEST.MASK_THRESH_BINARIZE, as Detectron) as RLE.

Images run one at a time: torchvision pads a batch to its largest image, and GroupNorm's
statistics would then include the padding of the smaller ones.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from gnconvert.errors import UsageError
from gnconvert.results import coco_categories
from gnconvert.results.detections import Detections

BACKENDS = ("gnconvert", "torchvision")


class TorchvisionPredictor:
    """A torchvision MaskRCNN (built by `detectron_maskrcnn`) answering like our Detector."""

    def __init__(self, model: torch.nn.Module, mask_thresh: float = 0.5):
        self.model = model.eval()
        self.mask_thresh = float(mask_thresh)
        self._contiguous = np.zeros(256, np.int64)  # COCO id -> contiguous index; 0 for ids no Detectron class has
        self._contiguous[coco_categories.COCO_IDS] = np.arange(1, len(coco_categories.COCO_IDS) + 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, image, masks: bool = True, dense_masks: bool = False, channel_order: str = "BGR") -> Detections:
        return self.predict_batch([image], masks, dense_masks, channel_order)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence, masks: bool = True, dense_masks: bool = False,
                      channel_order: str = "BGR") -> List[Detections]:
        from gnconvert.inference.preprocess import load_image

        results = []
        for image in images:
            bgr = load_image(image, channel_order)
            rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).to(self.device)
            out = self.model([rgb.to(torch.float32).div_(255.0)])[0]
            results.append(self._detections(out, bgr.shape[:2], masks, dense_masks))
        return results

    def _detections(self, out: Dict[str, torch.Tensor], size, masks: bool, dense_masks: bool) -> Detections:
        labels = out["labels"].cpu().numpy()
        classes = self._contiguous[labels]
        if np.any(classes == 0):
            raise UsageError(f"the torchvision model predicted COCO ids {sorted(set(labels[classes == 0]))} that no "
                             "Detectron class has; was its box predictor replaced or retrained?")
        boxes = out["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4)
        boxes[:, 2:] -= 1.0  # torchvision's right/bottom edges -> Detectron's last pixel
        order = np.lexsort((-out["scores"].cpu().numpy(), classes))  # Detectron's class-major order
        dets = Detections(boxes=boxes[order], scores=out["scores"].cpu().numpy().astype(np.float32)[order],
                          classes=classes[order].astype(np.int64), image_size=(int(size[0]), int(size[1])))
        if masks and "masks" in out:
            binary = (out["masks"][:, 0] > self.mask_thresh).to(torch.uint8).cpu().numpy()[order]
            dets.masks_rle = binary_rles(binary)
            if dense_masks:
                dets.masks = binary
        return dets


def binary_rles(masks: np.ndarray) -> List[dict]:
    """(N, H, W) uint8 binary masks -> COCO RLEs with str counts, as `Detections.masks_rle` holds them."""
    from pycocotools import mask as mask_util

    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]


def predictor_for(model: Any, backend: str) -> Any:
    """`model` (our loaded Detector) as the predictor `backend` names: itself, or its torchvision twin."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "gnconvert":
        return model
    from gnconvert.export.torchvision_api import to_torchvision

    return TorchvisionPredictor(to_torchvision(model), model.arch.test.mask_thresh_binarize)


def backend_mode(mode: Dict[str, Any], backend: str) -> Dict[str, Any]:
    """The run mode's record for verify's report, naming the backend when it is not ours (which also
    keeps partial results of the two backends apart on --resume)."""
    if backend == "gnconvert":
        return mode
    if not mode.get("exact", True):
        raise UsageError("--precision/--compile choose how gnconvert's own network runs; --backend torchvision "
                         "runs torchvision's model in float32: drop them")
    return {**mode, "exact": False, "backend": backend,
            "name": "torchvision backend (torchvision's MaskRCNN with the converted weights)"}

