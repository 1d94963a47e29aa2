"""One image through a `Detector`, stage by stage: what parity checks run, record and feed."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from gnconvert.results.detections import Detections


class StageRun:
    """One image through a `Detector`, stage by stage, keeping what Detectron's golden files
    hold under the same names (im_info, data_shape, data_crop, pK_shape/_channel_mean/_crop,
    rpn_rois_fpnK, rpn_roi_probs_fpnK, rois, cls_prob, bbox_pred, mask_rois, mask_probs).

    Any later stage can be fed Detectron's own input instead of ours (`rois=`, `boxes=`),
    so each stage is judged on its own.
    """

    def __init__(self, detector, image):
        import torch

        from gnconvert.inference.preprocess import load_image

        self.detector = detector
        im = torch.from_numpy(load_image(image)).to(detector.device)
        self.image_size = (int(im.shape[0]), int(im.shape[1]))
        with torch.no_grad():  # the Detector's stages run the network in exact float32 themselves
            self.data, self.im_info, self.scale = detector.input_blob(im)
            feats, logits, deltas = detector.features(self.data)
        self._set_features(feats, logits, deltas)

    def with_features(self, feats) -> StageRun:
        """The same image with other FPN maps (the noise floor's perturbed ones); the RPN head reruns."""
        import copy

        import torch

        from gnconvert.inference.modes import exact_fp32

        other = copy.copy(self)
        with torch.no_grad(), exact_fp32():
            logits, deltas = self.detector.network.rpn_head(feats)
        other._set_features(feats, logits, deltas)
        return other

    def _set_features(self, feats, logits, deltas) -> None:
        self.feats = feats
        self.logits = [x[0] for x in logits]
        self.deltas = [x[0] for x in deltas]
        first = self.detector.rpn_min_level
        self.intermediates: Dict[str, np.ndarray] = {
            "im_info": _np(self.im_info).reshape(1, 3),
            "data_shape": np.array(self.data.shape, dtype=np.int64),
            "data_crop": _np(self.data[0, :, :32, :32]),
        }
        for k, f in enumerate(self.feats, start=first):
            self.intermediates[f"p{k}_shape"] = np.array(f.shape, dtype=np.int64)
            self.intermediates[f"p{k}_channel_mean"] = _np(f[0].mean(dim=(1, 2)))
            self.intermediates[f"p{k}_crop"] = _np(f[0, :8, :16, :16])

    def boxes(self, rois: Optional[np.ndarray] = None) -> Detections:
        """Proposals, box head and box results (no masks); `rois` (R, 5) replaces our RoIs."""
        import torch

        det, inter = self.detector, self.intermediates
        with torch.no_grad():
            padded = (int(self.data.shape[2]), int(self.data.shape[3]))
            level_boxes, level_scores = det.proposals(self.logits, self.deltas, self.im_info, padded)
            for k, (b, p) in enumerate(zip(level_boxes, level_scores), start=det.rpn_min_level):
                inter[f"rpn_rois_fpn{k}"] = _with_batch_column(b)
                inter[f"rpn_roi_probs_fpn{k}"] = _np(p).reshape(-1, 1)
            ours = det.collect(level_boxes, level_scores)
            if rois is not None:
                ours = torch.as_tensor(np.asarray(rois, np.float32)[:, 1:5], device=ours.device)
            cls_prob, bbox_pred = det.box_head(self.feats, ours)
            boxes, scores, classes = det.box_results(ours, cls_prob, bbox_pred, self.scale, *self.image_size)
        inter["rois"] = _with_batch_column(ours)
        inter["cls_prob"] = _np(cls_prob)
        inter["bbox_pred"] = _np(bbox_pred)
        return Detections(boxes=_np(boxes).reshape(-1, 4), scores=_np(scores), classes=_np(classes),
                          image_size=self.image_size)

    def masks(self, detections: Detections) -> Detections:
        """Mask head and paste for these final boxes (ours, or Detectron's): a copy with RLE masks."""
        import dataclasses

        import torch

        from gnconvert.inference import rle
        from gnconvert.inference.mask_postprocess import mask_rois

        det = self.detector
        with torch.no_grad():
            boxes = torch.as_tensor(np.asarray(detections.boxes, np.float32), device=det.device).reshape(-1, 4)
            classes = torch.as_tensor(np.asarray(detections.classes, np.int64), device=det.device)
            probs = det.mask_head(self.feats, boxes, classes, self.scale)
            crops, starts = det.paste(probs, boxes, *self.image_size)
        self.intermediates["mask_rois"] = _with_batch_column(mask_rois(boxes, self.scale))
        self.intermediates["mask_probs"] = _np(probs)
        return dataclasses.replace(
            detections, mask_probs=_np(probs),
            masks_rle=rle.encode([_np(c) for c in crops], _np(starts), self.image_size), masks=None, timings={})

    def detections(self) -> Detections:
        """The free run: our own input to every stage."""
        return self.masks(self.boxes())


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _with_batch_column(boxes) -> np.ndarray:
    b = _np(boxes).astype(np.float32).reshape(-1, 4)
    return np.hstack([np.zeros((b.shape[0], 1), np.float32), b])
