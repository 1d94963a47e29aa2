"""Final detections from the box head (core/test.py: im_detect_bbox and
box_results_with_nms_and_limit).

Class scores are the softmax; class-specific deltas decode the RoIs *after*
dividing them by the image scale (Detectron decodes in original-image pixels,
so the "+1" widths are original pixels), then boxes are clipped to the original
image.  Per class 1..K-1: score > SCORE_THRESH, NMS at TEST.NMS.  If more than
DETECTIONS_PER_IM survive, the threshold is the DETECTIONS_PER_IM-th best score
and every class keeps score >= it, so ties can keep more.  Order: class-major,
RoI order within a class (cython_nms returns kept indices ascending).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import boxes as box_ops


@dataclass
class BoxResults:
    boxes: torch.Tensor  # (N, 4) float32, original-image pixels
    scores: torch.Tensor  # (N,) float32
    classes: torch.Tensor  # (N,) int64, 1..K-1


def detect_boxes(
    rois: torch.Tensor,
    cls_prob: torch.Tensor,
    bbox_pred: torch.Tensor,
    im_scale: float,
    image_size,
    bbox_reg_weights,
    bbox_xform_clip: float,
) -> torch.Tensor:
    """`im_detect_bbox`'s decoded, clipped boxes (R, 4K) from rois (R, 4) in input pixels."""
    boxes = rois / torch.tensor(float(np.float32(im_scale)), dtype=torch.float32, device=rois.device)
    pred = box_ops.decode(boxes, bbox_pred, tuple(bbox_reg_weights), bbox_xform_clip)
    height, width = image_size
    return box_ops.clip_tiled(pred, float(height), float(width))


def results_with_nms_and_limit(
    scores: torch.Tensor, boxes: torch.Tensor, score_thresh: float, nms_thresh: float, detections_per_im: int
) -> BoxResults:
    """scores (R, K), boxes (R, 4K) -> Detectron's final detections."""
    num_classes = scores.shape[1]
    thresh32 = float(np.float32(score_thresh))
    per_class = []
    for j in range(1, num_classes):
        inds = torch.nonzero(scores[:, j] > thresh32).reshape(-1)
        if inds.numel() == 0:
            continue
        scores_j = scores[inds, j]
        boxes_j = boxes[inds, 4 * j : 4 * j + 4]
        keep = box_ops.nms(boxes_j, scores_j, nms_thresh)
        per_class.append((j, boxes_j[keep], scores_j[keep]))

    if detections_per_im > 0:
        all_scores = np.concatenate([s.cpu().numpy() for _, _, s in per_class]) if per_class else np.zeros(0, np.float32)
        if all_scores.shape[0] > detections_per_im:
            image_thresh = float(np.sort(all_scores)[-detections_per_im])
            limited = []
            for j, b, s in per_class:
                keep = torch.nonzero(s >= image_thresh).reshape(-1)
                if keep.numel():
                    limited.append((j, b[keep], s[keep]))
            per_class = limited

    if not per_class:
        return BoxResults(
            boxes=boxes.new_zeros((0, 4)), scores=scores.new_zeros((0,)), classes=torch.zeros((0,), dtype=torch.int64)
        )
    return BoxResults(
        boxes=torch.cat([b for _, b, _ in per_class]),
        scores=torch.cat([s for _, _, s in per_class]),
        classes=torch.cat([torch.full((s.shape[0],), j, dtype=torch.int64) for j, _, s in per_class]),
    )
