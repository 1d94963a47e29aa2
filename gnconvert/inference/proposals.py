"""RPN proposals at test time, as Detectron's Python ops make them.

Per level (ops/generate_proposals.py): numpy's top-k of the objectness
probabilities, decode the chosen anchors with weights (1, 1, 1, 1), clip to the
*padded* input (im_info), drop boxes under one original pixel, NMS at
RPN_NMS_THRESH, keep RPN_POST_NMS_TOP_N.  Then across levels
(ops/collect_and_distribute_fpn_rpn_proposals.py `collect`): numpy's argsort of
all probabilities, best RPN_POST_NMS_TOP_N.  The C++ GenerateProposals op
differs (IoU > t, other decoding) and is not what Detectron's test path ran.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

from . import boxes as box_ops
from . import sorting
from .anchors import level_anchors


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Caffe2's Sigmoid, 1 / (1 + exp(-x)): saturates to exactly 1.0 the same way."""
    return 1.0 / (1.0 + torch.exp(-logits))


def level_proposals(
    probs: torch.Tensor,
    deltas: torch.Tensor,
    im_info: torch.Tensor,
    stride: int,
    anchor_size: float,
    aspect_ratios,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    bbox_xform_clip: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One image, one level: probs (A, H, W), deltas (4A, H, W) -> boxes (P, 4), probs (P,)."""
    num_anchors, height, width = probs.shape
    scores = probs.permute(1, 2, 0).reshape(-1)
    order = sorting.top_k_descending_torch(scores, pre_nms_top_n)
    scores = scores[order]
    deltas = deltas.permute(1, 2, 0).reshape(-1, 4)[order]
    # anchors only for the chosen cells: flat index = (y * W + x) * A + a
    cell = torch.from_numpy(level_anchors(int(stride), float(anchor_size), tuple(float(r) for r in aspect_ratios)))
    a = order % num_anchors
    xy = order // num_anchors
    shift_x = (xy % width).to(torch.float64) * float(stride)
    shift_y = (xy // width).to(torch.float64) * float(stride)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    anchors = (cell.to(order.device)[a] + shifts).to(torch.float32)

    boxes = box_ops.decode(anchors, deltas, (1.0, 1.0, 1.0, 1.0), bbox_xform_clip)
    info = im_info.reshape(-1)
    boxes = box_ops.clip_tiled(boxes, float(info[0]), float(info[1]))
    keep = _keep_sizable(boxes, min_size, info)
    boxes, scores = boxes[keep], scores[keep]
    if nms_thresh > 0:
        keep = box_ops.nms(boxes, scores, nms_thresh)
        if post_nms_top_n > 0:
            keep = keep[:post_nms_top_n]
        boxes, scores = boxes[keep], scores[keep]
    return boxes, scores


def _keep_sizable(boxes: torch.Tensor, min_size: float, info: torch.Tensor) -> torch.Tensor:
    """`_filter_boxes`: at least max(min_size, 1) original pixels each way, centre inside."""
    im_scale = info[2]
    ws_orig = (boxes[:, 2] - boxes[:, 0]) / im_scale + 1
    hs_orig = (boxes[:, 3] - boxes[:, 1]) / im_scale + 1
    min_size = max(float(min_size), 1.0)
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    x_ctr = boxes[:, 0] + ws / 2.0
    y_ctr = boxes[:, 1] + hs / 2.0
    ok = (ws_orig >= min_size) & (hs_orig >= min_size) & (x_ctr < info[1]) & (y_ctr < info[0])
    return torch.nonzero(ok).reshape(-1)


def collect(level_boxes: List[torch.Tensor], level_scores: List[torch.Tensor], top_n: int) -> torch.Tensor:
    """Best `top_n` proposals over all levels (numpy's order), as (R, 4) boxes."""
    boxes = torch.cat(level_boxes)
    scores = torch.cat(level_scores)
    neg = -scores.detach().cpu().numpy()
    inds = sorting.argsort(neg)[:top_n]
    return boxes[torch.from_numpy(np.ascontiguousarray(inds)).to(boxes.device)]
