"""`Detector`: a converted network plus Detectron's test-time pipeline (core/test.py
`im_detect_all`), one image at a time as Detectron ran it.

The network holds only learned layers; every decision Detectron makes between
them (proposal selection, level assignment, NMS, the per-image limit, the mask
paste) is in the sibling modules, each proven against Detectron's outputs.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..architecture import Architecture
from ..detections import Detections
from . import box_postprocess, mask_postprocess, preprocess, proposals, roi_levels
from .preprocess import ImageInput

Intermediates = Dict[str, np.ndarray]

STAGES = ("preprocess", "backbone", "fpn", "rpn", "box_head", "mask_head", "paste")


@dataclass
class ImageFeatures:
    """What the network computes once per image; `Detector.detect` takes it from there."""

    blob: preprocess.ImageBlob
    feats: List[torch.Tensor]  # P2..P6, batch of one
    logits: List[torch.Tensor]  # per level (A, H, W)
    deltas: List[torch.Tensor]  # per level (4A, H, W)
    timings: Dict[str, float]


class _Clock:
    """Per-stage wall time; waits for the GPU so a stage is charged its own work."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.times: Dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._t
        self._t = now


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _with_batch_column(boxes: torch.Tensor) -> np.ndarray:
    return np.hstack([np.zeros((boxes.shape[0], 1), np.float32), _np(boxes).astype(np.float32)])


class Detector(nn.Module):
    """Detectron's Mask R-CNN inference around a `MaskRCNNNetwork`.

    >>> det = Detector(network, arch).eval()
    >>> result = det.predict("image.jpg")      # Detections in original pixels
    """

    def __init__(self, network: nn.Module, arch: Architecture, channels_last_on_cpu: bool = False):
        super().__init__()
        self.network = network
        self.arch = arch
        # Opt-in: oneDNN's convolutions are ~25% faster on NHWC, but their float32
        # noise against Caffe2 doubles (FPN ~2e-6 -> 4e-6 relative), which in the
        # noise-sensitive BN* golden runs costs matched detections (R-50-FPN-BN
        # grace_hopper: 79/80 -> 75/80).  CUDA always keeps NCHW, which the fused
        # GroupNorm kernel expects.
        self.channels_last_on_cpu = channels_last_on_cpu
        self._layout: Optional[torch.memory_format] = None

    def _ensure_layout(self) -> None:
        wanted = torch.channels_last if (self.channels_last_on_cpu and self.device.type == "cpu") else torch.contiguous_format
        if self._layout != wanted:
            self.network.to(memory_format=wanted)
            self._layout = wanted

    def forward(self, image: ImageInput, masks: bool = True, dense_masks: bool = False) -> Detections:
        return self.predict(image, masks, dense_masks)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ---------------------------------------------------------------- public API
    @torch.no_grad()
    def predict(self, image: ImageInput, masks: bool = True, dense_masks: bool = False) -> Detections:
        """Detections for one BGR uint8 HxWx3 image (or a path), Detectron's order.

        masks: also run the mask head and paste RLE masks.  dense_masks: also keep
        the (N, H, W) uint8 masks as `result.masks` (the RLEs are always there).
        """
        return self._run(image, masks, dense_masks, None)

    @torch.no_grad()
    def predict_batch(
        self, images: Sequence[ImageInput], masks: bool = True, dense_masks: bool = False
    ) -> List[Detections]:
        """`predict` for each image.  Images whose padded inputs have the same size
        share one forward pass of body + FPN + RPN head; mixing sizes in one batch
        would change GroupNorm's statistics (padding joins them), so it is never done."""
        blobs = [self._prepare(im) for im in images]
        results: List[Optional[Detections]] = [None] * len(blobs)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, (blob, _) in enumerate(blobs):
            groups.setdefault(tuple(blob.data.shape[2:]), []).append(i)
        for idxs in groups.values():
            clock = _Clock(self.device)
            data = torch.cat([blobs[i][0].data for i in idxs]).to(self.device)
            feats, logits, deltas = self._forward_features(data, clock)
            share = {k: v / len(idxs) for k, v in clock.times.items()}
            for j, i in enumerate(idxs):
                blob, prep_time = blobs[i]
                per = _Clock(self.device)
                per.times = dict(share, preprocess=prep_time)
                results[i] = self._heads(
                    blob,
                    [f[j : j + 1] for f in feats],
                    [x[j] for x in logits],
                    [x[j] for x in deltas],
                    masks,
                    dense_masks,
                    per,
                    None,
                )
        return [r for r in results if r is not None]

    @torch.no_grad()
    def predict_with_intermediates(self, image: ImageInput, masks: bool = True) -> Tuple[Detections, Intermediates]:
        """`predict` plus the blobs Detectron's golden files hold, under the same names
        (im_info, data_shape, data_crop, pK_shape/_channel_mean/_crop,
        rpn_rois_fpnK, rpn_roi_probs_fpnK, rois, cls_prob, bbox_pred, mask_rois, mask_probs)."""
        inter: Intermediates = {}
        det = self._run(image, masks, False, inter)
        return det, inter

    # ---------------------------------------------------------------- pipeline
    def _prepare(self, image: ImageInput):
        t0 = time.perf_counter()
        im = preprocess.load_image(image)
        a = self.arch
        blob = preprocess.prepare(im, a.pixel_means, a.test.scale, a.test.max_size, a.coarsest_stride)
        return blob, time.perf_counter() - t0

    def _run(self, image: ImageInput, masks: bool, dense_masks: bool, inter: Optional[Intermediates]) -> Detections:
        return self.detect(self.compute_features(image), masks, dense_masks, inter)

    @torch.no_grad()
    def compute_features(self, image: ImageInput) -> ImageFeatures:
        """The image-level half: input blob, P2..P6 and the RPN head's outputs."""
        blob, prep_time = self._prepare(image)
        clock = _Clock(self.device)
        feats, logits, deltas = self._forward_features(blob.data.to(self.device), clock)
        return ImageFeatures(blob, feats, [x[0] for x in logits], [x[0] for x in deltas], dict(clock.times, preprocess=prep_time))

    @torch.no_grad()
    def detect(
        self,
        features: ImageFeatures,
        masks: bool = True,
        dense_masks: bool = False,
        intermediates: Optional[Intermediates] = None,
        given_rois: Optional[np.ndarray] = None,
        given_detections: Optional[Detections] = None,
    ) -> Detections:
        """The RoI-level half on computed features.

        given_rois (R, 5) replaces the proposals and given_detections replaces the
        box results fed to the mask head ("teacher forcing", for parity checks:
        each later stage can be judged on Detectron's own input to it).
        """
        clock = _Clock(self.device)
        clock.times = dict(features.timings)
        blob = features.blob
        if intermediates is not None:
            intermediates["im_info"] = _np(blob.im_info)
            intermediates["data_shape"] = np.array(blob.data.shape, dtype=np.int64)
            intermediates["data_crop"] = _np(blob.data[0, :, :32, :32])
        return self._heads(
            blob, features.feats, features.logits, features.deltas, masks, dense_masks, clock, intermediates,
            given_rois, given_detections,
        )

    def _forward_features(self, data: torch.Tensor, clock: _Clock):
        self._ensure_layout()
        net = self.network
        body = net.body(data)
        clock.lap("backbone")
        feats = net.fpn(body)
        clock.lap("fpn")
        logits, deltas = net.rpn_head(feats)
        clock.lap("rpn")
        return feats, logits, deltas

    def _heads(
        self, blob, feats, logits, deltas, masks, dense_masks, clock: _Clock, inter, given_rois=None, given_detections=None
    ) -> Detections:
        a, t, net = self.arch, self.arch.test, self.network
        im_info = blob.im_info.to(self.device)
        if inter is not None:
            for k, f in enumerate(feats, start=a.rpn_min_level):
                inter[f"p{k}_shape"] = np.array(f.shape, dtype=np.int64)
                inter[f"p{k}_channel_mean"] = _np(f[0].mean(dim=(1, 2)))
                inter[f"p{k}_crop"] = _np(f[0, :8, :16, :16])

        roi_feats = feats[a.roi_min_level - a.rpn_min_level : a.roi_max_level - a.rpn_min_level + 1]
        if given_detections is not None:  # straight to the mask head with these boxes
            det = dataclasses.replace(given_detections, masks_rle=None, mask_probs=None, timings={})
            res = box_postprocess.BoxResults(
                boxes=torch.as_tensor(det.boxes, device=self.device),
                scores=torch.as_tensor(det.scores, device=self.device),
                classes=torch.as_tensor(det.classes),
            )
            if masks:
                self._masks(det, res, feats, roi_feats, blob, dense_masks, clock, inter)
            det.timings = dict(clock.times)
            return det

        level_boxes, level_scores = [], []
        for i, k in enumerate(range(a.rpn_min_level, a.rpn_max_level + 1)):
            boxes, scores = proposals.level_proposals(
                proposals.sigmoid(logits[i]),
                deltas[i],
                im_info,
                stride=2**k,
                anchor_size=a.anchor_start_size * 2.0 ** (k - a.rpn_min_level),
                aspect_ratios=a.aspect_ratios,
                pre_nms_top_n=t.rpn_pre_nms_top_n,
                post_nms_top_n=t.rpn_post_nms_top_n,
                nms_thresh=t.rpn_nms_thresh,
                min_size=t.rpn_min_size,
                bbox_xform_clip=a.bbox_xform_clip,
            )
            level_boxes.append(boxes)
            level_scores.append(scores)
            if inter is not None:
                inter[f"rpn_rois_fpn{k}"] = _with_batch_column(boxes)
                inter[f"rpn_roi_probs_fpn{k}"] = _np(scores).reshape(-1, 1)
        rois = proposals.collect(level_boxes, level_scores, t.rpn_post_nms_top_n)
        if given_rois is not None:
            rois = torch.as_tensor(np.asarray(given_rois, np.float32)[:, 1:5], device=rois.device)
        clock.lap("rpn")

        levels = roi_levels.assign_levels(
            rois, a.roi_min_level, a.roi_max_level, a.roi_canonical_scale, a.roi_canonical_level
        )
        x = roi_levels.multilevel_roi_align(
            roi_feats, rois, levels, a.roi_min_level, a.box_roi_resolution, a.box_sampling_ratio
        )
        if rois.shape[0] == 0:  # nothing survived the RPN: no detections, no crash
            cls_prob = x.new_zeros((0, a.num_classes))
            bbox_pred = x.new_zeros((0, 4 * a.num_classes))
        else:
            cls_score, bbox_pred = net.box_predictor(net.box_head(x))
            cls_prob = torch.softmax(cls_score, dim=1)
        pred = box_postprocess.detect_boxes(
            rois, cls_prob, bbox_pred, blob.scale, blob.image_size, a.bbox_reg_weights, a.bbox_xform_clip
        )
        res = box_postprocess.results_with_nms_and_limit(
            cls_prob, pred, t.score_thresh, t.nms, t.detections_per_im
        )
        if inter is not None:
            inter["rois"] = _with_batch_column(rois)
            inter["cls_prob"] = _np(cls_prob)
            inter["bbox_pred"] = _np(bbox_pred)
        clock.lap("box_head")

        det = Detections(
            boxes=_np(res.boxes).astype(np.float32).reshape(-1, 4),
            scores=_np(res.scores).astype(np.float32),
            classes=_np(res.classes).astype(np.int64),
            image_size=blob.image_size,
        )
        if masks:
            self._masks(det, res, feats, roi_feats, blob, dense_masks, clock, inter)
        det.timings = dict(clock.times)
        return det

    def _masks(self, det, res, feats, roi_feats, blob, dense_masks, clock: _Clock, inter) -> None:
        a, net = self.arch, self.network
        m = a.mask_resolution
        if len(det) == 0:
            probs = np.zeros((0, m, m), np.float32)
            mrois = torch.zeros((0, 4))
        else:
            mrois = mask_postprocess.mask_rois(res.boxes, blob.scale)
            levels = roi_levels.assign_levels(
                mrois, a.roi_min_level, a.roi_max_level, a.roi_canonical_scale, a.roi_canonical_level
            )
            x = roi_levels.multilevel_roi_align(
                roi_feats, mrois, levels, a.roi_min_level, a.mask_roi_resolution, a.mask_sampling_ratio
            )
            probs = _np(mask_postprocess.class_probs(net.mask_head(x), res.classes))
        clock.lap("mask_head")
        pasted = mask_postprocess.paste_masks(probs, det.boxes, det.image_size, a.test.mask_thresh_binarize)
        det.masks_rle = mask_postprocess.encode(pasted)
        det.mask_probs = probs
        if dense_masks:
            det.masks = pasted  # (N, H, W) uint8, beside the RLEs
        clock.lap("paste")
        if inter is not None:
            inter["mask_rois"] = _with_batch_column(mrois)
            inter["mask_probs"] = probs
