"""Detectron's whole test-time pipeline as one TorchScript-able module.

`Detector` (gnconvert.inference) reproduces Detectron's sort and NMS tie order
with numpy and resizes with OpenCV, neither of which a TorchScript archive can
carry.  This module runs the same stages in torch ops only, on one BGR uint8
(H, W, 3) image, so `torch.jit.script` can save it and a plain torch +
torchvision install can run it:

- preprocessing: float64 mean subtraction, OpenCV's resize (`cv2_resize`), zero pad;
- the network (GroupNorm through F.group_norm: the Triton branch is skipped when scripting);
- proposals, collection, level assignment, RoIAlign, box decoding, per-class NMS
  with Detectron's "+1" IoU >= threshold, the per-image limit, mask RoIs and the
  mask paste, with the same float32 operations in the same order as the eager path
  (the shared pieces are the eager functions themselves);
- sorts in numpy 1.23's order, ties included (`scripted_sort`), as `Detector` does:
  saturated RPN probabilities (exactly 1.0) tie by the thousand in frozen-BN models.

Constants that the eager path takes from numpy (float32-rounded thresholds, the
cell anchors) are computed once here, at construction, with the same numpy code.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..architecture import Architecture
from ..inference import boxes as box_ops
from ..inference import mask_postprocess, proposals, roi_levels
from ..inference.anchors import cell_anchors
from .cv2_resize import resize_by_factor, resize_to, round_half_even
from .scripted_sort import argsort, nms_order, top_k_descending

OUTPUTS = {
    "boxes": "(N, 4) float32 x1, y1, x2, y2 in original-image pixels (Detectron's inclusive convention)",
    "scores": "(N,) float32",
    "classes": "(N,) int64 Detectron's contiguous class index 1..80",
    "mask_probs": "(N, 28, 28) float32 sigmoid of each detection's own class",
    "masks": "(N, H, W) uint8 binary masks pasted into the image (Detectron's segm_results)",
}


def _f32(x: float) -> float:
    """The float32 value numpy compares against (Detectron's thresholds are float32)."""
    return float(np.float32(x))


def nms(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """Detectron's greedy NMS (IoU >= thresh suppresses): kept indices, ascending."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    suppress = box_ops.pairwise_overlap(boxes.float()) >= thresh
    order: List[int] = nms_order(scores).tolist()
    suppressed = torch.zeros((n,), dtype=torch.bool, device=boxes.device)
    kept = torch.zeros((n,), dtype=torch.bool, device=boxes.device)
    for i in order:
        if bool(suppressed[i]):
            continue
        kept[i] = True
        suppressed |= suppress[i]
    return torch.nonzero(kept).reshape(-1)


class ScriptableDetector(nn.Module):
    """BGR uint8 image (H, W, 3) -> Dict[str, Tensor] of Detectron's detections (see OUTPUTS)."""

    def __init__(self, network: nn.Module, arch: Architecture):
        super().__init__()
        if arch.kind != "mask_rcnn":
            raise ValueError(f"only Mask R-CNN architectures export to TorchScript, not {arch.kind!r}")
        t = arch.test
        self.network = network
        levels = range(arch.rpn_min_level, arch.rpn_max_level + 1)
        anchors = [cell_anchors(2**k, arch.anchor_start_size * 2.0 ** (k - arch.rpn_min_level), arch.aspect_ratios)
                   for k in levels]
        self.register_buffer("pixel_means", torch.tensor(arch.pixel_means, dtype=torch.float64))
        self.register_buffer("cell_anchors", torch.from_numpy(np.stack(anchors)))  # (L, A, 4) float64
        self.test_scale = int(t.scale)
        self.max_size = int(t.max_size)
        self.stride = int(arch.coarsest_stride)
        self.rpn_min_level = int(arch.rpn_min_level)
        self.rpn_max_level = int(arch.rpn_max_level)
        self.pre_nms_top_n = int(t.rpn_pre_nms_top_n)
        self.post_nms_top_n = int(t.rpn_post_nms_top_n)
        self.rpn_nms_thresh = float(t.rpn_nms_thresh)
        self.rpn_nms_thresh32 = _f32(t.rpn_nms_thresh)
        self.rpn_min_size = float(t.rpn_min_size)
        self.clip32 = _f32(arch.bbox_xform_clip)
        self.roi_min_level = int(arch.roi_min_level)
        self.roi_max_level = int(arch.roi_max_level)
        self.canonical_scale = int(arch.roi_canonical_scale)
        self.canonical_level = int(arch.roi_canonical_level)
        self.box_resolution = int(arch.box_roi_resolution)
        self.box_sampling_ratio = int(arch.box_sampling_ratio)
        self.mask_roi_resolution = int(arch.mask_roi_resolution)
        self.mask_sampling_ratio = int(arch.mask_sampling_ratio)
        self.mask_resolution = int(arch.mask_resolution)
        self.bbox_reg_weights: List[float] = [float(w) for w in arch.bbox_reg_weights]
        self.score_thresh32 = _f32(t.score_thresh)
        self.nms32 = _f32(t.nms)
        self.detections_per_im = int(t.detections_per_im)
        self.mask_thresh = float(t.mask_thresh_binarize)

    # ------------------------------------------------------------------ stages
    def compute_scale(self, height: int, width: int) -> float:
        scale = float(self.test_scale) / float(min(height, width))
        if round_half_even(scale * float(max(height, width))) > self.max_size:
            scale = float(self.max_size) / float(max(height, width))
        return scale

    def preprocess(self, image: Tensor) -> Tuple[Tensor, Tensor, float]:
        """-> (1, 3, H_pad, W_pad) float32 input, im_info (3,) float32, the float64 scale."""
        height, width = image.shape[0], image.shape[1]
        im = (image.to(torch.float64) - self.pixel_means).to(torch.float32).permute(2, 0, 1)
        scale = self.compute_scale(height, width)
        im = resize_by_factor(im.contiguous(), scale)
        rh, rw = im.shape[1], im.shape[2]
        ph = int(math.ceil(float(rh) / float(self.stride))) * self.stride
        pw = int(math.ceil(float(rw) / float(self.stride))) * self.stride
        data = torch.zeros((1, 3, ph, pw), dtype=torch.float32, device=image.device)
        data[0, :, :rh, :rw] = im
        im_info = torch.tensor([float(ph), float(pw), scale], dtype=torch.float64).to(torch.float32)
        return data, im_info.to(image.device), scale

    def level_proposals(self, logits: Tensor, deltas: Tensor, im_info: Tensor, level: int) -> Tuple[Tensor, Tensor]:
        """One level of Detectron's GenerateProposals: logits (A, H, W), deltas (4A, H, W)."""
        probs = proposals.sigmoid(logits)
        num_anchors, width = probs.shape[0], probs.shape[2]
        stride = 2 ** level
        scores = probs.permute(1, 2, 0).reshape(-1)
        order = top_k_descending(scores, self.pre_nms_top_n)
        scores = scores[order]
        deltas = deltas.permute(1, 2, 0).reshape(-1, 4)[order]
        cell = self.cell_anchors[level - self.rpn_min_level]
        a = order % num_anchors
        xy = torch.div(order, num_anchors, rounding_mode="floor")
        shift_x = (xy % width).to(torch.float64) * float(stride)
        shift_y = torch.div(xy, width, rounding_mode="floor").to(torch.float64) * float(stride)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        anchors = (cell[a] + shifts).to(torch.float32)
        boxes = box_ops.decode(anchors, deltas, [1.0, 1.0, 1.0, 1.0], self.clip32)
        info = im_info.reshape(-1)
        boxes = box_ops.clip_tiled(boxes, float(info[0]), float(info[1]))
        keep = proposals._keep_sizable(boxes, self.rpn_min_size, info)
        boxes, scores = boxes[keep], scores[keep]
        if self.rpn_nms_thresh > 0:
            keep = nms(boxes, scores, self.rpn_nms_thresh32)
            if self.post_nms_top_n > 0:
                keep = keep[: self.post_nms_top_n]
            boxes, scores = boxes[keep], scores[keep]
        return boxes, scores

    def rpn_rois(self, logits: List[Tensor], deltas: List[Tensor], im_info: Tensor) -> Tensor:
        """All levels' proposals, the best RPN_POST_NMS_TOP_N of them (Detectron's `collect`)."""
        level_boxes: List[Tensor] = []
        level_scores: List[Tensor] = []
        for i in range(self.rpn_max_level - self.rpn_min_level + 1):
            b, s = self.level_proposals(logits[i][0], deltas[i][0], im_info, self.rpn_min_level + i)
            level_boxes.append(b)
            level_scores.append(s)
        boxes = torch.cat(level_boxes)
        order = argsort(-torch.cat(level_scores))[: self.post_nms_top_n]
        return boxes[order]

    def pool(self, features: List[Tensor], rois: Tensor, resolution: int, sampling_ratio: int) -> Tensor:
        levels = roi_levels.assign_levels(rois, self.roi_min_level, self.roi_max_level, self.canonical_scale,
                                          self.canonical_level)
        return roi_levels.multilevel_roi_align(features, rois, levels, self.roi_min_level, resolution, sampling_ratio)

    def detect_boxes(self, features: List[Tensor], rois: Tensor, scale: float, height: int,
                     width: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Box head, decoding in original pixels, per-class NMS and the per-image limit."""
        x = self.pool(features, rois, self.box_resolution, self.box_sampling_ratio)
        cls_score, bbox_pred = self.network.box_predictor(self.network.box_head(x))
        cls_prob = torch.softmax(cls_score, dim=1)
        scale32 = torch.tensor(scale, dtype=torch.float64).to(torch.float32).to(rois.device)
        pred = box_ops.decode(rois / scale32, bbox_pred, self.bbox_reg_weights, self.clip32)
        pred = box_ops.clip_tiled(pred, float(height), float(width))

        classes: List[int] = []
        kept_boxes: List[Tensor] = []
        kept_scores: List[Tensor] = []
        for j in range(1, cls_prob.shape[1]):
            inds = torch.nonzero(cls_prob[:, j] > self.score_thresh32).reshape(-1)
            if inds.numel() == 0:
                continue
            scores_j = cls_prob[inds, j]
            boxes_j = pred[inds, 4 * j: 4 * j + 4]
            keep = nms(boxes_j, scores_j, self.nms32)
            classes.append(j)
            kept_boxes.append(boxes_j[keep])
            kept_scores.append(scores_j[keep])
        if self.detections_per_im > 0 and len(kept_scores) > 0:
            everything = torch.cat(kept_scores)
            if everything.shape[0] > self.detections_per_im:
                image_thresh = float(torch.sort(everything)[0][-self.detections_per_im])
                for i in range(len(kept_scores)):
                    keep = torch.nonzero(kept_scores[i] >= image_thresh).reshape(-1)
                    kept_boxes[i] = kept_boxes[i][keep]
                    kept_scores[i] = kept_scores[i][keep]
        if len(classes) == 0:
            return (pred.new_zeros((0, 4)), cls_prob.new_zeros((0,)),
                    torch.zeros((0,), dtype=torch.int64, device=pred.device))
        labels = [torch.full((kept_scores[i].shape[0],), classes[i], dtype=torch.int64, device=pred.device)
                  for i in range(len(classes))]
        return torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(labels)

    def mask_probs(self, features: List[Tensor], boxes: Tensor, classes: Tensor, scale: float) -> Tensor:
        m = self.mask_resolution
        if boxes.shape[0] == 0:
            return torch.zeros((0, m, m), dtype=torch.float32, device=boxes.device)
        mrois = mask_postprocess.mask_rois(boxes, scale)
        x = self.pool(features, mrois, self.mask_roi_resolution, self.mask_sampling_ratio)
        return mask_postprocess.class_probs(self.network.mask_head(x), classes)

    def paste(self, probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
        """Detectron's segm_results: expand each box by (M+2)/M, resize the bordered
        probabilities to it as OpenCV does, threshold, paste clipped to the image."""
        n, m = probs.shape[0], self.mask_resolution
        out = torch.zeros((n, height, width), dtype=torch.uint8, device=probs.device)
        if n == 0:
            return out
        scale = (m + 2.0) / m
        w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
        h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
        x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
        y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
        expanded = torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)
        coords: List[List[int]] = expanded.to(torch.int32).to(torch.int64).tolist()  # truncation, as astype(int32)
        padded = torch.zeros((1, m + 2, m + 2), dtype=torch.float32, device=probs.device)
        for i in range(n):
            x1, y1, x2, y2 = coords[i][0], coords[i][1], coords[i][2], coords[i][3]
            padded[0, 1:-1, 1:-1] = probs[i]
            w = max(x2 - x1 + 1, 1)
            h = max(y2 - y1 + 1, 1)
            mask = (resize_to(padded, w, h)[0] > self.mask_thresh).to(torch.uint8)
            xa, xb = max(x1, 0), min(x2 + 1, width)
            ya, yb = max(y1, 0), min(y2 + 1, height)
            if xb > xa and yb > ya:
                out[i, ya:yb, xa:xb] = mask[ya - y1: yb - y1, xa - x1: xb - x1]
        return out

    # ----------------------------------------------------------------- forward
    def forward(self, image: Tensor) -> Dict[str, Tensor]:
        """image: (H, W, 3) uint8 BGR, as cv2.imread gives it -> see OUTPUTS."""
        if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
            raise ValueError("expected a (H, W, 3) uint8 BGR image tensor")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError("expected an image at least 1x1")
        height, width = image.shape[0], image.shape[1]
        data, im_info, scale = self.preprocess(image)
        features, logits, deltas = self.network(data)
        rois = self.rpn_rois(logits, deltas, im_info)
        roi_features = features[self.roi_min_level - self.rpn_min_level: self.roi_max_level - self.rpn_min_level + 1]
        boxes, scores, classes = self.detect_boxes(roi_features, rois, scale, height, width)
        probs = self.mask_probs(roi_features, boxes, classes, scale)
        return {
            "boxes": boxes,
            "scores": scores,
            "classes": classes,
            "mask_probs": probs,
            "masks": self.paste(probs, boxes, height, width),
        }
