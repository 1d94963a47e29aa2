"""`Detector`: a converted network plus Detectron's test-time pipeline (core/test.py
`im_detect_all`), as one TorchScript-able module.

The stages, each a public method with tensors in and out, in the order they run:

    input_blob(image)                     -> data, im_info, scale
    features(data)                        -> P2..P6, RPN logits, RPN deltas (network)
    proposals(logits, deltas, im_info, .) -> per-level boxes and probabilities
    collect(level boxes, level scores)    -> the RoIs
    box_head(feats, rois)                 -> class probabilities, box deltas (network)
    box_results(rois, probs, deltas, ...) -> boxes, scores, classes
    mask_head(feats, boxes, classes, .)   -> 28 x 28 probabilities (network)
    paste(probs, boxes, height, width)    -> mask crops and where they start

`forward` runs them all on one (H, W, 3) uint8 BGR tensor; `torch.jit.script`
saves this very module for `gnconvert export --to torchscript`.  `predict` and
`predict_batch` are the Python API around the same stages (images of any kind in,
`Detections` out, RLE masks made on the host at the end).  Parity checks call the
stages one by one and feed Detectron's own input to any of them.

Everything runs on the model's device.  Host syncs between the network and the
final detections, each forced by a data-dependent size or decision:
- the numpy-order sorts: one tie check per sort; with ties, a few scalar reads per
  partition pass (`sorting`);
- NMS: the groups' sizes and one convergence test per round (`nms`);
- the sizes of the per-level proposal lists after NMS (`proposals`);
- the mask paste: the boxes' integer corners (`mask_postprocess`);
- `box_results`: the number of detections (boolean indexing).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from gnconvert.architecture import Architecture, Kind
from gnconvert.inference import box_postprocess, mask_postprocess, preprocess, proposals, roi_levels
from gnconvert.inference.anchors import cell_anchors
from gnconvert.inference.modes import EXACT, FastNetwork, exact_fp32

OUTPUTS = {
    "boxes": "(N, 4) float32 x1, y1, x2, y2 in original-image pixels (Detectron's inclusive convention)",
    "scores": "(N,) float32",
    "classes": "(N,) int64 Detectron's contiguous class index 1..80",
    "mask_probs": "(N, 28, 28) float32 sigmoid of each detection's own class",
    "masks": "(N, H, W) uint8 binary masks pasted into the image (Detectron's segm_results)",
}


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


class Detector(nn.Module):
    """Detectron's Mask R-CNN inference around a `MaskRCNNNetwork`.

    >>> det = Detector(network, arch).eval()
    >>> result = det.predict("image.jpg")      # Detections in original pixels
    >>> out = det(torch.from_numpy(cv2.imread("image.jpg")))   # dict of tensors (see OUTPUTS)
    """

    __jit_unused_properties__ = ["device"]
    __jit_ignored_attributes__ = ["mode", "_fast"]

    def __init__(self, network: nn.Module, arch: Architecture):
        super().__init__()
        if arch.kind != Kind.MASK_RCNN:
            raise ValueError(f"Detector needs a mask_rcnn architecture, not {arch.kind!r}")
        t = arch.test
        self.network = network
        self.arch = arch
        self.mode = EXACT  # how the network parts run (gnconvert.inference.modes)
        self._fast: Optional[FastNetwork] = None  # their runner in a fast mode
        levels = range(arch.rpn_min_level, arch.rpn_max_level + 1)
        anchors = [torch.from_numpy(cell_anchors(2**k, arch.anchor_start_size * 2.0 ** (k - arch.rpn_min_level),
                                                 arch.aspect_ratios)) for k in levels]
        self.register_buffer("pixel_means", torch.tensor(arch.pixel_means, dtype=torch.float64), persistent=False)
        self.register_buffer("cell_anchors", torch.stack(anchors), persistent=False)  # (L, A, 4) float64
        self.test_scale = int(t.scale)
        self.max_size = int(t.max_size)
        self.coarsest_stride = int(arch.coarsest_stride)
        self.rpn_min_level = int(arch.rpn_min_level)
        self.rpn_max_level = int(arch.rpn_max_level)
        self.pre_nms_top_n = int(t.rpn_pre_nms_top_n)
        self.post_nms_top_n = int(t.rpn_post_nms_top_n)
        self.rpn_nms_thresh = float(t.rpn_nms_thresh)
        self.rpn_min_size = float(t.rpn_min_size)
        self.bbox_xform_clip = float(arch.bbox_xform_clip)
        self.roi_min_level = int(arch.roi_min_level)
        self.roi_max_level = int(arch.roi_max_level)
        self.canonical_scale = int(arch.roi_canonical_scale)
        self.canonical_level = int(arch.roi_canonical_level)
        self.box_resolution = int(arch.box_roi_resolution)
        self.box_sampling_ratio = int(arch.box_sampling_ratio)
        self.mask_roi_resolution = int(arch.mask_roi_resolution)
        self.mask_sampling_ratio = int(arch.mask_sampling_ratio)
        self.num_classes = int(arch.num_classes)
        self.mask_resolution = int(arch.mask_resolution)
        self.bbox_reg_weights: List[float] = [float(w) for w in arch.bbox_reg_weights]
        self.score_thresh = float(t.score_thresh)
        self.nms_thresh = float(t.nms)
        self.detections_per_im = int(t.detections_per_im)
        self.mask_thresh = float(t.mask_thresh_binarize)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.jit.unused
    def set_mode(self, mode):
        """Run the network parts in `mode` (a `modes.RunMode`), once, on the final device; the
        exact mode is the default and leaves everything as it is."""
        from gnconvert.errors import UsageError

        if not self.mode.exact:
            raise UsageError(f"this Detector already runs in {self.mode.name}; load the model again for another mode")
        mode.check_device(self.device)
        self.mode = mode
        if not mode.exact:
            self._fast = FastNetwork(self.network, mode, self.device)
        return self

    # ------------------------------------------------------------------ stages
    def input_blob(self, image: Tensor) -> Tuple[Tensor, Tensor, float]:
        """(H, W, 3) uint8 BGR -> (1, 3, H_pad, W_pad) input, im_info (3,), the float64 scale."""
        return preprocess.input_blob(image, self.pixel_means, self.test_scale, self.max_size, self.coarsest_stride)

    def features(self, data: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """The image-level network: (N, 3, H, W) -> P2..P6, RPN logits (N, A, h, w), deltas (N, 4A, h, w)."""
        if not torch.jit.is_scripting():
            if self._fast is not None:
                return self._fast.image_level(data)
            with exact_fp32():  # every eager caller, not only predict: cuDNN's TF32 default is off
                return self.network(data)
        return self.network(data)

    def proposals(self, logits: List[Tensor], deltas: List[Tensor], im_info: Tensor,
                  padded_size: Tuple[int, int]) -> Tuple[List[Tensor], List[Tensor]]:
        """One image's per-level RPN proposals after NMS: boxes (P, 4) and probabilities (P,), level by
        level, from its logits (A, h, w) and deltas (4A, h, w)."""
        boxes: List[Tensor] = []
        scores: List[Tensor] = []
        for i in range(len(logits)):
            level = self.rpn_min_level + i
            b, s = proposals.level_candidates(
                logits[i], deltas[i], self.cell_anchors[i], 1 << level, im_info, padded_size, self.pre_nms_top_n,
                self.rpn_min_size, self.bbox_xform_clip)
            boxes.append(b)
            scores.append(s)
        return proposals.suppress_per_level(boxes, scores, self.rpn_nms_thresh, self.post_nms_top_n)

    def collect(self, level_boxes: List[Tensor], level_scores: List[Tensor]) -> Tensor:
        """The best RPN_POST_NMS_TOP_N proposals over all levels: the RoIs (R, 4) in input pixels."""
        return proposals.collect(level_boxes, level_scores, self.post_nms_top_n)

    def _pool(self, feats: List[Tensor], rois: Tensor, resolution: int, sampling_ratio: int) -> Tensor:
        levels = roi_levels.assign_levels(rois, self.roi_min_level, self.roi_max_level, self.canonical_scale,
                                          self.canonical_level)
        roi_feats = feats[self.roi_min_level - self.rpn_min_level: self.roi_max_level - self.rpn_min_level + 1]
        return roi_levels.multilevel_roi_align(roi_feats, rois, levels, self.roi_min_level, resolution, sampling_ratio)

    def box_head(self, feats: List[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """RoIs (R, 4) of one image (feats of batch one) -> class probabilities (R, K), box deltas (R, 4K)."""
        x = self._pool(feats, rois, self.box_resolution, self.box_sampling_ratio)
        if rois.shape[0] == 0:  # nothing survived the RPN: no detections, no crash
            return x.new_zeros((0, self.num_classes)), x.new_zeros((0, 4 * self.num_classes))
        cls_score, bbox_pred = self._box_outputs(x)
        return torch.softmax(cls_score, dim=1), bbox_pred

    def _box_outputs(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            if self._fast is not None:
                return self._fast.box(x)
            with exact_fp32():
                return self.network.box_predictor(self.network.box_head(x))
        return self.network.box_predictor(self.network.box_head(x))

    def box_results(self, rois: Tensor, cls_prob: Tensor, bbox_pred: Tensor, scale: float, height: int,
                    width: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Class-specific decoding in original pixels, per-class threshold + NMS, the per-image limit
        -> boxes (N, 4), scores (N,), classes (N,) int64, in Detectron's order."""
        boxes = box_postprocess.class_boxes(rois, bbox_pred, scale, height, width, self.bbox_reg_weights,
                                            self.bbox_xform_clip)
        return box_postprocess.results_with_nms_and_limit(cls_prob, boxes, self.score_thresh, self.nms_thresh,
                                                          self.detections_per_im)

    def mask_head(self, feats: List[Tensor], boxes: Tensor, classes: Tensor, scale: float) -> Tensor:
        """Final boxes (N, 4) in original pixels -> (N, 28, 28) probabilities of their own classes."""
        m = self.mask_resolution
        if boxes.shape[0] == 0:
            return torch.zeros((0, m, m), dtype=torch.float32, device=boxes.device)
        x = self._pool(feats, mask_postprocess.mask_rois(boxes, scale), self.mask_roi_resolution,
                       self.mask_sampling_ratio)
        return mask_postprocess.class_probs(self._mask_logits(x), classes)

    def _mask_logits(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if self._fast is not None:
                return self._fast.mask(x)
            with exact_fp32():
                return self.network.mask_head(x)
        return self.network.mask_head(x)

    def paste(self, probs: Tensor, boxes: Tensor, height: int, width: int) -> Tuple[List[Tensor], Tensor]:
        """Detectron's segm_results: each mask's binary crop inside the image and where it starts (y, x)."""
        return mask_postprocess.paste(probs, boxes, height, width, self.mask_thresh)

    # ----------------------------------------------------------------- forward
    def forward(self, image: Tensor) -> Dict[str, Tensor]:
        """image: (H, W, 3) uint8 BGR, as cv2.imread gives it -> see OUTPUTS."""
        if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
            raise ValueError("expected a (H, W, 3) uint8 BGR image tensor")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError("expected an image at least 1x1")
        with torch.no_grad():
            height, width = image.shape[0], image.shape[1]
            data, im_info, scale = self.input_blob(image)
            feats, logits, deltas = self.features(data)
            level_boxes, level_scores = self.proposals([x[0] for x in logits], [x[0] for x in deltas], im_info,
                                                       (data.shape[2], data.shape[3]))
            rois = self.collect(level_boxes, level_scores)
            cls_prob, bbox_pred = self.box_head(feats, rois)
            boxes, scores, classes = self.box_results(rois, cls_prob, bbox_pred, scale, height, width)
            probs = self.mask_head(feats, boxes, classes, scale)
            crops, starts = self.paste(probs, boxes, height, width)
            masks = mask_postprocess.dense(crops, starts, height, width)
        return {"boxes": boxes, "scores": scores, "classes": classes, "mask_probs": probs, "masks": masks}

    # -------------------------------------------------------------- Python API
    @torch.jit.unused
    def predict(self, image, masks: bool = True, dense_masks: bool = False, channel_order: str = "BGR"):
        """Detections for one image, Detectron's order.

        image: a path, a PIL image, or a uint8 HxWx3 numpy array / torch tensor in
        `channel_order` ("BGR" as cv2.imread gives it, or "RGB").  masks: also run the
        mask head and paste RLE masks.  dense_masks: also keep (N, H, W) uint8 masks.
        """
        return self.predict_batch([image], masks, dense_masks, channel_order)[0]

    @torch.jit.unused
    def predict_batch(self, images: Sequence, masks: bool = True, dense_masks: bool = False,
                      channel_order: str = "BGR") -> list:
        """`predict` for each image.  Images whose padded inputs have the same size share one
        forward pass of body + FPN + RPN head; mixing sizes in one batch would change
        GroupNorm's statistics (padding joins them), so it is never done."""
        dev = self.device
        prepared = []
        with torch.no_grad():
            for image in images:
                t0 = time.perf_counter()
                bgr = torch.from_numpy(preprocess.load_image(image, channel_order)).to(dev)
                data, im_info, scale = self.input_blob(bgr)
                clock = _Clock(dev)
                clock.times["preprocess"] = time.perf_counter() - t0
                prepared.append((bgr.shape[0], bgr.shape[1], data, im_info, scale, clock))
            groups: Dict[Tuple[int, int], List[int]] = {}
            for i, p in enumerate(prepared):
                groups.setdefault((int(p[2].shape[2]), int(p[2].shape[3])), []).append(i)
            results: List[Optional[object]] = [None] * len(prepared)
            for idxs in groups.values():
                clock = _Clock(dev)
                feats, logits, deltas = self.features(torch.cat([prepared[i][2] for i in idxs]))
                clock.lap("network")
                for j, i in enumerate(idxs):
                    height, width, data, im_info, scale, own = prepared[i]
                    own.times.update({k: v / len(idxs) for k, v in clock.times.items()})
                    own._t = time.perf_counter()
                    results[i] = self._heads(
                        [f[j: j + 1] for f in feats], [x[j] for x in logits], [x[j] for x in deltas], im_info,
                        (data.shape[2], data.shape[3]), scale, height, width, masks, dense_masks, own)
        return results

    @torch.jit.unused
    def _heads(self, feats, logits, deltas, im_info, padded_size, scale, height, width, masks, dense_masks,
               clock: _Clock):
        from gnconvert.inference import rle
        from gnconvert.results.detections import Detections

        level_boxes, level_scores = self.proposals(logits, deltas, im_info, padded_size)
        rois = self.collect(level_boxes, level_scores)
        clock.lap("proposals")
        cls_prob, bbox_pred = self.box_head(feats, rois)
        clock.lap("box_head")
        boxes, scores, classes = self.box_results(rois, cls_prob, bbox_pred, scale, height, width)
        clock.lap("box_results")
        det = Detections(boxes=boxes.cpu().numpy().reshape(-1, 4), scores=scores.cpu().numpy(),
                         classes=classes.cpu().numpy(), image_size=(height, width))
        if masks:
            probs = self.mask_head(feats, boxes, classes, scale)
            clock.lap("mask_head")
            crops, starts = self.paste(probs, boxes, height, width)
            if dense_masks:
                det.masks = mask_postprocess.dense(crops, starts, height, width).cpu().numpy()
            host_crops = [c.cpu().numpy() for c in crops]
            host_starts = starts.cpu().numpy()
            clock.lap("paste")
            det.mask_probs = probs.cpu().numpy()
            det.masks_rle = rle.encode(host_crops, host_starts, (height, width))
            clock.lap("rle")
        det.timings = dict(clock.times)
        return det
