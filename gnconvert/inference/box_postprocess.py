"""Final detections from the box head (core/test.py: im_detect_bbox and
box_results_with_nms_and_limit).

Class scores are the softmax; class-specific deltas decode the RoIs *after*
dividing them by the image scale (Detectron decodes in original-image pixels,
so the "+1" widths are original pixels), then boxes are clipped to the original
image.  Per class 1..K-1: score > SCORE_THRESH, NMS at TEST.NMS (all classes in
one batched call).  If more than DETECTIONS_PER_IM survive, the threshold is the
DETECTIONS_PER_IM-th best score and every class keeps score >= it, so ties can
keep more.  Order: class-major, RoI order within a class (cython_nms returns kept
indices ascending).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from gnconvert.inference import boxes as box_ops
from gnconvert.inference import exportable
from gnconvert.inference.nms import batched_nms


def class_boxes(
    rois: Tensor, bbox_pred: Tensor, im_scale: float, height: int, width: int, weights: List[float],
    bbox_xform_clip: float,
) -> Tensor:
    """`im_detect_bbox`'s decoded, clipped boxes (R, 4K) from rois (R, 4) in input pixels."""
    pred = box_ops.decode(box_ops.divide(rois, box_ops.float32(im_scale)), bbox_pred, weights, bbox_xform_clip)
    return box_ops.clip_tiled(pred, box_ops.as_float(height), box_ops.as_float(width))


def results_with_nms_and_limit(
    scores: Tensor, boxes: Tensor, score_thresh: float, nms_thresh: float, detections_per_im: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """scores (R, K), boxes (R, 4K) -> Detectron's final boxes (N, 4), scores (N,), classes (N,) int64."""
    num_rois, num_classes = scores.shape[0], scores.shape[1]
    # (class, RoI) pairs over the threshold, class-major and RoI-ascending, as Detectron's loop visits them
    pairs = torch.nonzero(scores[:, 1:].t() > box_ops.float32(score_thresh))
    classes = pairs[:, 0] + 1
    rois = pairs[:, 1]
    cand_scores = scores[rois, classes]
    cand_boxes = boxes.reshape(num_rois, num_classes, 4)[rois, classes]
    lengths = torch.zeros((num_classes - 1,), dtype=torch.int64, device=scores.device).index_add_(
        0, pairs[:, 0], torch.ones_like(classes))
    keep = batched_nms(cand_boxes, cand_scores, lengths, box_ops.float32(nms_thresh))
    cand_boxes, cand_scores, classes = cand_boxes[keep], cand_scores[keep], classes[keep]
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("stages").limit_detections(cand_boxes, cand_scores, classes, detections_per_im)
    if 0 < detections_per_im < cand_scores.shape[0]:
        image_thresh = torch.sort(cand_scores)[0][-detections_per_im]
        limit = torch.nonzero(cand_scores >= image_thresh).reshape(-1)
        cand_boxes, cand_scores, classes = cand_boxes[limit], cand_scores[limit], classes[limit]
    return cand_boxes, cand_scores, classes
