"""FPN level assignment and multi-level RoIAlign (modeling/FPN.py, Caffe2 RoIAlign).

Each RoI goes to level floor(4 + log2(sqrt(area) / 224 + 1e-6)) clipped to
[ROI_MIN_LEVEL, ROI_MAX_LEVEL], area with "+1" sides, in float32 on
network-input coordinates.  Features come back in the RoIs' own order (what
Detectron's BatchPermutation with `rois_idx_restore` does).
torchvision's roi_align with aligned=False and sampling_ratio=2 computes Caffe2's
RoIAlign exactly (checked against Caffe2: max difference 0.0).

Degenerate RoIs: Detectron asserts (and crashes) on a negative "+1" area, which a
final box narrower than a pixel gets once scaled up for the mask head.  Here such
an area counts as 0, so the RoI goes to the finest level; RoIAlign itself treats
it as a 1x1-pixel box, as Caffe2 would.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torchvision.ops import roi_align


def assign_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_scale: int, canonical_level: int
) -> torch.Tensor:
    """(R,) int64 FPN level for each box (R, 4)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    s = torch.sqrt(area.clamp(min=0))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale + 1e-6))
    return lvl.clamp(min_level, max_level).to(torch.int64)


def multilevel_roi_align(
    features: List[torch.Tensor],
    boxes: torch.Tensor,
    levels: torch.Tensor,
    min_level: int,
    resolution: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """Pool (R, C, res, res) features for boxes (R, 4) of image 0 from their levels.

    features[i] is level min_level + i.
    """
    num_rois = boxes.shape[0]
    channels = features[0].shape[1]
    out = features[0].new_zeros((num_rois, channels, resolution, resolution))
    rois = torch.cat([boxes.new_zeros((num_rois, 1)), boxes], dim=1)
    for i, feat in enumerate(features):
        idx = torch.nonzero(levels == min_level + i).reshape(-1)
        if idx.numel() == 0:
            continue
        scale = 1.0 / math.pow(2.0, min_level + i)
        out[idx] = roi_align(
            feat, rois[idx], (resolution, resolution), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=False
        )
    return out
