"""One image through a `Detector`'s own stage runner, with a recorder: what parity checks judge.

The detections come from `Detector.run_stages`, the very code `predict` and the TorchScript
archive run; this module only records the intermediates under the names Detectron's golden
files use (im_info, data_shape, data_crop, pK_shape/_channel_mean/_crop, rpn_rois_fpnK,
rpn_roi_probs_fpnK, rois, cls_prob, bbox_pred, mask_rois, mask_probs) and feeds Detectron's
own input to a stage (`rois=`, or the final boxes to `masks`) so that each stage is judged alone.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, Optional

import numpy as np

from gnconvert.results.detections import Detections

_BOXES = ("rpn_rois_fpn", "rois", "mask_rois")  # recorded as (R, 5): batch index 0, then x1, y1, x2, y2


class StageRun:
    """One image: its input blob and FPN maps computed once, the stages after them on demand."""

    def __init__(self, detector, image):
        import torch

        from gnconvert.inference.preprocess import load_image

        self.detector = detector
        im = torch.from_numpy(load_image(image)).to(detector.device)
        self.image_size = (int(im.shape[0]), int(im.shape[1]))
        with torch.no_grad():
            self.data, self.im_info, self.scale = detector.input_blob(im)
            feats, logits, deltas = detector.features(self.data)
        self._set_features(feats, logits, deltas)

    def with_features(self, feats) -> StageRun:
        """The same image with other FPN maps (the noise floor's perturbed ones); the RPN head reruns."""
        import torch

        other = copy.copy(self)
        with torch.no_grad():
            logits, deltas = self.detector.parts.rpn_head(feats)
        other._set_features(feats, logits, deltas)
        return other

    def _set_features(self, feats, logits, deltas) -> None:
        self.feats = feats
        self.logits = [x[0] for x in logits]
        self.deltas = [x[0] for x in deltas]
        self.intermediates: Dict[str, np.ndarray] = {
            "im_info": _np(self.im_info).reshape(1, 3),
            "data_shape": np.array(self.data.shape, dtype=np.int64),
            "data_crop": _np(self.data[0, :, :32, :32]),
        }
        for k, f in enumerate(self.feats, start=self.detector.rpn_min_level):
            self.intermediates[f"p{k}_shape"] = np.array(f.shape, dtype=np.int64)
            self.intermediates[f"p{k}_channel_mean"] = _np(f[0].mean(dim=(1, 2)))
            self.intermediates[f"p{k}_crop"] = _np(f[0, :8, :16, :16])

    def _run(self, masks: bool, rois=None, given=None):
        import torch

        record: Dict[str, torch.Tensor] = {}
        padded = (int(self.data.shape[2]), int(self.data.shape[3]))
        with torch.no_grad():
            out = self.detector.run_stages(self.feats, self.logits, self.deltas, self.im_info, padded, self.scale,
                                           *self.image_size, masks=masks, record=record, rois=rois, given=given)
        for name, t in record.items():
            self.intermediates[name] = _with_batch_column(t) if name.startswith(_BOXES) else _np(t)
            if name.startswith("rpn_roi_probs"):
                self.intermediates[name] = self.intermediates[name].reshape(-1, 1)
        return out

    def boxes(self, rois: Optional[np.ndarray] = None) -> Detections:
        """Proposals, box head and box results (no masks); `rois` (R, 5) replaces our RoIs."""
        import torch

        given_rois = None if rois is None else torch.as_tensor(np.asarray(rois, np.float32)[:, 1:5],
                                                                device=self.detector.device)
        boxes, scores, classes, _, _, _ = self._run(masks=False, rois=given_rois)
        return _box_detections(boxes, scores, classes, self.image_size)

    def masks(self, detections: Detections) -> Detections:
        """Mask head and paste for these final boxes (ours, or Detectron's): a copy with RLE masks."""
        import torch

        dev = self.detector.device
        boxes = torch.as_tensor(np.asarray(detections.boxes, np.float32), device=dev).reshape(-1, 4)
        classes = torch.as_tensor(np.asarray(detections.classes, np.int64), device=dev)
        _, _, _, probs, crops, starts = self._run(masks=True, given=(boxes, classes))
        return _with_masks(detections, probs, crops, starts, self.image_size)

    def detections(self) -> Detections:
        """The free run: our own input to every stage, in one pass of the runner."""
        boxes, scores, classes, probs, crops, starts = self._run(masks=True)
        ours = _box_detections(boxes, scores, classes, self.image_size)
        return _with_masks(ours, probs, crops, starts, self.image_size)


def _box_detections(boxes, scores, classes, image_size) -> Detections:
    return Detections(boxes=_np(boxes).reshape(-1, 4), scores=_np(scores), classes=_np(classes), image_size=image_size)


def _with_masks(detections: Detections, probs, crops, starts, image_size) -> Detections:
    from gnconvert.inference import rle

    return dataclasses.replace(detections, mask_probs=_np(probs), masks=None, timings={},
                               masks_rle=rle.encode([_np(c) for c in crops], _np(starts), image_size))


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _with_batch_column(boxes) -> np.ndarray:
    b = _np(boxes).astype(np.float32).reshape(-1, 4)
    return np.hstack([np.zeros((b.shape[0], 1), np.float32), b])
