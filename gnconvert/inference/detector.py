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

`run_stages` runs everything after the image-level network for one image, and it is the one
place the stages are chained: `forward` (what `torch.jit.script` saves for `gnconvert export
--to torchscript`) calls it, `predict` / `predict_batch` (images of any kind in, `Detections`
out, RLE masks made on the host at the end) call it, and the parity checks call it with a
recorder for the intermediates and, where a stage is judged on its own, Detectron's own input
to it.  The network parts run as the model's runtime says (gnconvert.runtime).

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
from gnconvert.inference import box_postprocess, clock, exportable, mask_postprocess, preprocess, proposals, roi_levels
from gnconvert.inference.anchors import cell_anchors
from gnconvert.inference.exportable import exporting
from gnconvert.inference.loaded import LoadedModel
from gnconvert.runtime import Runtime
from gnconvert.runtime.network_parts import NetworkParts

OUTPUTS = {
    "boxes": "(N, 4) float32 x1, y1, x2, y2 in original-image pixels (Detectron's inclusive convention)",
    "scores": "(N,) float32",
    "classes": "(N,) int64 Detectron's contiguous class index 1..80",
    "mask_probs": "(N, 28, 28) float32 sigmoid of each detection's own class",
    "masks": "(N, H, W) uint8 binary masks pasted into the image (Detectron's segm_results)",
}


class Detector(LoadedModel):
    """Detectron's Mask R-CNN inference around a `MaskRCNNNetwork`.

    >>> det = Detector(network, arch, runtime).eval()   # gnconvert.api.build_model makes one
    >>> result = det.predict("image.jpg")      # Detections in original pixels
    >>> out = det(torch.from_numpy(cv2.imread("image.jpg")))   # dict of tensors (see OUTPUTS)

    runtime: where and how the network parts run (default: the exact mode on the CPU), fixed for
    the model's life; provenance: where its weights came from (model id, source md5), for reports.
    """

    __jit_ignored_attributes__ = ["runtime", "parts", "provenance"]

    def __init__(self, network: nn.Module, arch: Architecture, runtime: Optional[Runtime] = None,
                 provenance: Optional[Dict[str, str]] = None):
        if arch.kind != Kind.MASK_RCNN:
            raise ValueError(f"Detector needs a mask_rcnn architecture, not {arch.kind!r}")
        super().__init__(network, arch, runtime, provenance)
        t = arch.test
        self.parts = NetworkParts(network, self.runtime)  # the network parts in the runtime's mode
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

    # ------------------------------------------------------------------ stages
    def input_blob(self, image: Tensor) -> Tuple[Tensor, Tensor, float]:
        """(H, W, 3) uint8 BGR -> (1, 3, H_pad, W_pad) input, im_info (3,), the float64 scale."""
        return preprocess.input_blob(image, self.pixel_means, self.test_scale, self.max_size, self.coarsest_stride)

    def features(self, data: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """The image-level network: (N, 3, H, W) -> P2..P6, RPN logits (N, A, h, w), deltas (N, 4A, h, w)."""
        if not torch.jit.is_scripting():
            return self.parts.image_level(data)  # every eager caller runs in the runtime's numerics
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
        if not exporting() and rois.shape[0] == 0:  # nothing survived the RPN: no detections, no crash
            return x.new_zeros((0, self.num_classes)), x.new_zeros((0, 4 * self.num_classes))
        if not torch.jit.is_scripting():
            cls_score, bbox_pred = self.parts.box(x)
        else:
            cls_score, bbox_pred = self.network.box_predictor(self.network.box_head(x))
        return torch.softmax(cls_score, dim=1), bbox_pred

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
        if not exporting() and boxes.shape[0] == 0:
            return torch.zeros((0, m, m), dtype=torch.float32, device=boxes.device)
        x = self._pool(feats, mask_postprocess.mask_rois(boxes, scale), self.mask_roi_resolution,
                       self.mask_sampling_ratio)
        if not torch.jit.is_scripting():
            return mask_postprocess.class_probs(self.parts.mask(x), classes)
        return mask_postprocess.class_probs(self.network.mask_head(x), classes)

    def paste(self, probs: Tensor, boxes: Tensor, height: int, width: int) -> Tuple[List[Tensor], Tensor]:
        """Detectron's segm_results: each mask's binary crop inside the image and where it starts (y, x)."""
        return mask_postprocess.paste(probs, boxes, height, width, self.mask_thresh)

    # ------------------------------------------------------------- the runner
    def _lap(self, times: Optional[Dict[str, float]], stage: str, device: torch.device) -> None:
        """`clock.lap`, when the caller keeps `times`."""
        if times is not None:
            clock.lap(times, stage, device)

    def run_stages(self, feats: List[Tensor], logits: List[Tensor], deltas: List[Tensor], im_info: Tensor,
                   padded_size: Tuple[int, int], scale: float, height: int, width: int, masks: bool = True,
                   record: Optional[Dict[str, Tensor]] = None, rois: Optional[Tensor] = None,
                   given: Optional[Tuple[Tensor, Tensor]] = None, times: Optional[Dict[str, float]] = None,
                   paste: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor], Tensor]:
        """One image after the image-level network (feats of batch one, its logits (A, h, w) and deltas
        (4A, h, w)): proposals, RoIs, box head, detections, then (masks) mask head and paste.

        -> boxes (N, 4), scores (N,), classes (N,), mask probabilities (N, 28, 28), mask crops and
        where they start (N, 2).  record: filled with the intermediates under the golden files'
        names; rois: these RoIs (R, 4) instead of ours; given: (boxes, classes) to run only the mask
        stages on (scores come back empty); times: seconds per stage, added to; paste: False leaves
        the paste to the caller (no crops come back)."""
        if given is None:
            level_boxes, level_scores = self.proposals(logits, deltas, im_info, padded_size)
            ours = self.collect(level_boxes, level_scores)
            rois = ours if rois is None else rois
            self._lap(times, "proposals", im_info.device)
            cls_prob, bbox_pred = self.box_head(feats, rois)
            self._lap(times, "box_head", im_info.device)
            boxes, scores, classes = self.box_results(rois, cls_prob, bbox_pred, scale, height, width)
            self._lap(times, "box_results", im_info.device)
            if record is not None:
                for i in range(len(level_boxes)):
                    record["rpn_rois_fpn" + str(self.rpn_min_level + i)] = level_boxes[i]
                    record["rpn_roi_probs_fpn" + str(self.rpn_min_level + i)] = level_scores[i]
                record["rois"] = rois
                record["cls_prob"] = cls_prob
                record["bbox_pred"] = bbox_pred
        else:
            boxes, classes = given
            scores = torch.zeros((0,), dtype=torch.float32, device=boxes.device)
        m = self.mask_resolution
        probs = torch.zeros((0, m, m), dtype=torch.float32, device=boxes.device)
        crops: List[Tensor] = []
        starts = torch.zeros((0, 2), dtype=torch.int64, device=boxes.device)
        if masks:
            probs = self.mask_head(feats, boxes, classes, scale)
            self._lap(times, "mask_head", im_info.device)
            if paste:
                crops, starts = self.paste(probs, boxes, height, width)
            self._lap(times, "paste", im_info.device)
            if record is not None:
                record["mask_rois"] = mask_postprocess.mask_rois(boxes, scale)
                record["mask_probs"] = probs
        return boxes, scores, classes, probs, crops, starts

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
            traced = exporting()
            boxes, scores, classes, probs, crops, starts = self.run_stages(
                feats, [x[0] for x in logits], [x[0] for x in deltas], im_info, (data.shape[2], data.shape[3]), scale,
                height, width, paste=not traced)
            masks = torch.zeros((0, height, width), dtype=torch.uint8, device=boxes.device)
            if not torch.jit.is_scripting():
                if traced:  # torch.export: masks straight from the probabilities (exportable.stages)
                    masks = exportable.traced("stages").paste_dense(probs, boxes, height, width, self.mask_thresh)
            if not traced:
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
                times = {"preprocess": time.perf_counter() - t0}
                prepared.append((bgr.shape[0], bgr.shape[1], data, im_info, scale, times))
            groups: Dict[Tuple[int, int], List[int]] = {}
            for i, p in enumerate(prepared):
                groups.setdefault((int(p[2].shape[2]), int(p[2].shape[3])), []).append(i)
            results: List[Optional[object]] = [None] * len(prepared)
            for idxs in groups.values():
                shared: Dict[str, float] = {clock.LAST: time.perf_counter()}
                feats, logits, deltas = self.features(torch.cat([prepared[i][2] for i in idxs]))
                clock.lap(shared, "network", self.device)
                for j, i in enumerate(idxs):
                    height, width, data, im_info, scale, times = prepared[i]
                    times.update({"network": shared["network"] / len(idxs), clock.LAST: time.perf_counter()})
                    out = self.run_stages([f[j: j + 1] for f in feats], [x[j] for x in logits], [x[j] for x in deltas],
                                          im_info, (data.shape[2], data.shape[3]), scale, height, width, masks,
                                          times=times)
                    results[i] = self._detections(out, height, width, masks, dense_masks, times)
        return results

    @torch.jit.unused
    def _detections(self, out, height: int, width: int, masks: bool, dense_masks: bool, times: Dict[str, float]):
        """run_stages' tensors -> Detections on the host, RLE masks encoded from the crops."""
        from gnconvert.inference import rle
        from gnconvert.results.detections import Detections

        boxes, scores, classes, probs, crops, starts = out
        det = Detections(boxes=boxes.cpu().numpy().reshape(-1, 4), scores=scores.cpu().numpy(),
                         classes=classes.cpu().numpy(), image_size=(height, width))
        if masks:
            if dense_masks:
                det.masks = mask_postprocess.dense(crops, starts, height, width).cpu().numpy()
            det.mask_probs = probs.cpu().numpy()
            det.masks_rle = rle.encode([c.cpu().numpy() for c in crops], starts.cpu().numpy(), (height, width))
            clock.lap(times, "rle", self.device)
        times.pop(clock.LAST, None)
        det.timings = dict(times)
        return det
