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

torchvision's CPU RoIAlign runs on one core; each RoI is pooled on its own, so on the CPU the
RoIs are split into one chunk per thread and pooled side by side (threads in Python, which the
op leaves for its C++ loop).  The result is the same to the bit.  The scripted archive pools on
one thread: `torch.jit.fork` resumes the caller's continuation on an inter-op thread, which
loses the caller's thread-local grad mode (a scripted forward left autograd off behind it).
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

import torch
from torchvision.ops import roi_align

from gnconvert.inference.exportable import exporting


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
    threads = 1  # scripted or exported: one thread (see the module docstring)
    if not torch.jit.is_scripting():
        if boxes.device.type == "cpu" and not torch.compiler.is_exporting():
            threads = torch.get_num_threads()
    min_chunk = 64  # RoIs: below this a chunk is not worth a thread
    jobs: List[Tuple[int, torch.Tensor]] = []  # (level index, the RoIs' indices)
    for i in range(len(features)):
        idx = torch.nonzero(levels == min_level + i).reshape(-1)
        n = idx.numel()
        if exporting():  # traced sizes: every level is pooled, possibly with no RoIs
            jobs.append((i, idx))
        elif n > 0:
            chunks = max(1, min(threads, n // min_chunk))
            for part in idx.chunk(chunks):
                jobs.append((i, part))
    if torch.jit.is_scripting() or len(jobs) < 2 or threads < 2:
        pooled = [_pool(features[i], rois[idx], min_level + i, resolution, sampling_ratio) for i, idx in jobs]
    else:
        pooled = _pool_in_threads(features, rois, jobs, min_level, resolution, sampling_ratio, threads)
    for (_, idx), p in zip(jobs, pooled):
        out[idx] = p
    return out


def _pool(feat: torch.Tensor, rois: torch.Tensor, level: int, resolution: int, sampling_ratio: int) -> torch.Tensor:
    scale = 1.0 / math.pow(2.0, level)
    return roi_align(feat, rois, (resolution, resolution), spatial_scale=scale, sampling_ratio=sampling_ratio,
                     aligned=False)


@torch.jit.unused
def _pool_in_threads(features: List[torch.Tensor], rois: torch.Tensor, jobs: List[Tuple[int, torch.Tensor]],
                     min_level: int, resolution: int, sampling_ratio: int, threads: int) -> List[torch.Tensor]:
    pool = _executor(threads)
    return list(pool.map(lambda job: _pool(features[job[0]], rois[job[1]], min_level + job[0], resolution,
                                           sampling_ratio), jobs))


@functools.lru_cache(maxsize=4)
def _executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gnconvert-roi-align")
