"""RPN proposals at test time, as Detectron's Python ops make them.

Per level (ops/generate_proposals.py): numpy's top-k of the objectness
probabilities, decode the chosen anchors with weights (1, 1, 1, 1), clip to the
*padded* input (im_info), drop boxes under one original pixel, NMS at
RPN_NMS_THRESH, keep RPN_POST_NMS_TOP_N.  Then across levels
(ops/collect_and_distribute_fpn_rpn_proposals.py `collect`): numpy's argsort of
all probabilities, best RPN_POST_NMS_TOP_N.  The C++ GenerateProposals op
differs (IoU > t, other decoding) and is not what Detectron's test path ran.

The levels' NMS runs as one batched call (`nms.batched_nms`).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from gnconvert.inference import boxes as box_ops
from gnconvert.inference import exportable, sorting
from gnconvert.inference.nms import batched_nms


def sigmoid(logits: Tensor) -> Tensor:
    """Caffe2's Sigmoid, 1 / (1 + exp(-x)): saturates to exactly 1.0 the same way."""
    return 1.0 / (1.0 + torch.exp(-logits))


def level_candidates(
    logits: Tensor,
    deltas: Tensor,
    cell_anchors: Tensor,
    stride: int,
    im_info: Tensor,
    padded_size: Tuple[int, int],
    pre_nms_top_n: int,
    min_size: float,
    bbox_xform_clip: float,
) -> Tuple[Tensor, Tensor]:
    """One image, one level, up to NMS: logits (A, H, W), deltas (4A, H, W), the level's
    cell anchors (A, 4) float64, im_info (3,) on the device and the same padded (height,
    width) as ints -> boxes (P, 4), probabilities (P,), best first."""
    num_anchors, width = logits.shape[0], logits.shape[2]
    scores = sigmoid(logits).permute(1, 2, 0).reshape(-1)
    order = sorting.top_k_descending(scores, pre_nms_top_n)
    scores = scores[order]
    deltas = deltas.permute(1, 2, 0).reshape(-1, 4)[order]
    # anchors only for the chosen cells: flat index = (y * W + x) * A + a
    a = order % num_anchors
    cell = torch.div(order, num_anchors, rounding_mode="floor")
    shift_x = (cell % width).to(torch.float64) * float(stride)
    shift_y = torch.div(cell, width, rounding_mode="floor").to(torch.float64) * float(stride)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    anchors = (cell_anchors[a] + shifts).to(torch.float32)

    boxes = box_ops.decode(anchors, deltas, [1.0, 1.0, 1.0, 1.0], bbox_xform_clip)
    boxes = box_ops.clip_tiled(boxes, box_ops.as_float(padded_size[0]), box_ops.as_float(padded_size[1]))
    keep = keep_sizable(boxes, min_size, im_info.reshape(-1))
    return boxes[keep], scores[keep]


def keep_sizable(boxes: Tensor, min_size: float, info: Tensor) -> Tensor:
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


def suppress_per_level(
    level_boxes: List[Tensor], level_scores: List[Tensor], nms_thresh: float, post_nms_top_n: int
) -> Tuple[List[Tensor], List[Tensor]]:
    """Each level's NMS (one batched call) and its first `post_nms_top_n` survivors."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("stages").suppress_per_level(level_boxes, level_scores, nms_thresh, post_nms_top_n)
    if nms_thresh <= 0:
        return level_boxes, level_scores
    boxes = torch.cat(level_boxes)
    scores = torch.cat(level_scores)
    lengths = torch.tensor([b.shape[0] for b in level_boxes], dtype=torch.int64, device=boxes.device)
    keep = batched_nms(boxes, scores, lengths, box_ops.float32(nms_thresh))
    level = sorting.segment_ids(lengths)[keep]
    counts = torch.zeros_like(lengths).index_add_(0, level, torch.ones_like(level))
    if post_nms_top_n > 0:
        rank = torch.arange(keep.shape[0], device=keep.device) - (torch.cumsum(counts, 0) - counts)[level]
        keep = keep[rank < post_nms_top_n]
        counts = torch.clamp(counts, max=post_nms_top_n)
    sizes: List[int] = counts.tolist()
    return list(torch.split(boxes[keep], sizes)), list(torch.split(scores[keep], sizes))


def collect(level_boxes: List[Tensor], level_scores: List[Tensor], top_n: int) -> Tensor:
    """Best `top_n` proposals over all levels (numpy's order), as (R, 4) boxes."""
    boxes = torch.cat(level_boxes)
    order = sorting.argsort(-torch.cat(level_scores))
    return boxes[order[:top_n]]
