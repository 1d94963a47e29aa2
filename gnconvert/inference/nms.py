"""Detectron's NMS (utils/cython_nms.pyx), exact and vectorised, for many groups at once.

Detectron's rules: candidates are visited in `scores.argsort()[::-1]` order
(numpy's tie order, see `sorting`), IoU uses "+1" sides in float32 with cython's
operations, a candidate is suppressed when its IoU with a kept one is >= the
float32 threshold, and the kept indices come back in ascending input order.

Greedy NMS reads as a sequential sweep, but its answer is the one set K in which
a candidate is kept exactly when no kept candidate visited before it suppresses
it.  K is reached in rounds over the suppression edges (pairs with IoU >= the
threshold, from the earlier-visited candidate to the later one): a candidate
whose possible suppressors are all removed is kept, and a candidate that a kept
one suppresses is removed.  Every round settles at least the first unsettled
candidate and usually almost all of them, so a few passes over a short edge list
replace n sequential steps, on the CPU and on the GPU alike.

Groups (RPN levels, classes) are independent: their IoU matrices are computed
side by side, padded to their longest member, in chunks that bound the
(chunk, n, n) matrices' memory.  Host syncs: the groups' sizes, the edge lists'
lengths, and one convergence test per round.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from gnconvert.inference import exportable, sorting
from gnconvert.inference.boxes import pairwise_overlap_between


def _settle(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """Edges src -> dst (src visited first, suppresses dst) among n candidates -> kept (n,) bool."""
    dev = src.device
    kept = torch.zeros((n,), dtype=torch.bool, device=dev)
    removed = torch.zeros((n,), dtype=torch.bool, device=dev)
    undecided = torch.ones((n,), dtype=torch.bool, device=dev)
    while True:
        # kept: nothing that could still suppress it is left
        blocked = torch.zeros((n,), dtype=torch.bool, device=dev)
        blocked[dst] = True
        newly_kept = undecided & ~blocked
        kept = kept | newly_kept
        undecided = undecided & ~newly_kept
        # removed: a kept candidate suppresses it
        hit = torch.zeros((n,), dtype=torch.bool, device=dev)
        hit[dst[newly_kept[src]]] = True
        removed = removed | (undecided & hit)
        undecided = undecided & ~hit
        if not bool(undecided.any()):
            return kept
        live = undecided[dst] & ~removed[src]  # the edges that can still decide something
        src, dst = src[live], dst[live]
    return kept  # not reached


def _chunks(lengths: List[int], budget: int) -> List[List[int]]:
    """Groups to run side by side: by decreasing size, each chunk padded to its first (longest)
    group, a new chunk when the matrices would pass the budget or a group is under half as long."""
    num = len(lengths)
    keys: List[int] = []
    for g in range(num):
        if lengths[g] > 1:
            keys.append((num - 1 - lengths[g]) * num + g)  # longest first, then by g
    keys.sort()
    order = [k % num for k in keys]
    out: List[List[int]] = []
    for g in order:
        if len(out) > 0:
            longest = lengths[out[-1][0]]
            if 2 * lengths[g] >= longest and (len(out[-1]) + 1) * longest * longest <= budget:
                out[-1].append(g)
                continue
        out.append([g])
    return out


def batched_nms(boxes: Tensor, scores: Tensor, lengths: Tensor, thresh: float, budget: int = 1 << 24) -> Tensor:
    """NMS within each consecutive group (group g has lengths[g] rows): kept row indices, ascending.

    boxes (N, 4) float32, scores (N,), thresh already rounded to float32 by the caller;
    budget bounds the (chunk, n, n) matrices' entries (64 MB as float32 by default).
    """
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("nms").batched_nms(boxes, scores, lengths, thresh)
    n = boxes.shape[0]
    dev = boxes.device
    if n == 0:
        return torch.zeros((0,), dtype=torch.int64, device=dev)
    lengths = lengths.to(device=dev, dtype=torch.int64)
    order = sorting.nms_order_segments(scores, lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    sizes: List[int] = lengths.tolist()
    # suppression edges between visiting positions (0..n-1 in `order`), group by group
    sources: List[Tensor] = []
    targets: List[Tensor] = []
    for chunk in _chunks(sizes, budget):
        longest = sizes[chunk[0]]
        slot = torch.arange(longest, device=dev)
        groups = torch.tensor(chunk, dtype=torch.int64, device=dev)
        valid = slot[None, :] < lengths[groups][:, None]
        pos = torch.where(valid, starts[groups][:, None] + slot[None, :], torch.zeros_like(valid, dtype=torch.int64))
        padded = boxes[order[pos]].to(torch.float32)
        # padding slots hold boxes far away from everything and from each other: no IoU
        far = (slot.to(torch.float32) + 1.0) * -1.0e7
        padded = torch.where(valid[:, :, None], padded, torch.stack((far, far, far + 1, far + 1), 1)[None])
        # only later candidates can be suppressed: the upper triangle, in bands of rows
        band = max(64, (longest + 3) // 4)
        for top in range(0, longest, band):
            rows = padded[:, top: top + band]
            cols = padded[:, top:]
            suppresses = (pairwise_overlap_between(rows, cols) >= thresh).triu_(1)
            edges = torch.nonzero(suppresses)
            sources.append(pos[edges[:, 0], top + edges[:, 1]])
            targets.append(pos[edges[:, 0], top + edges[:, 2]])
    if len(sources) == 0:
        return torch.arange(n, device=dev)
    kept = _settle(torch.cat(sources), torch.cat(targets), n)
    keep = torch.zeros((n,), dtype=torch.bool, device=dev)
    keep[order] = kept
    return torch.nonzero(keep).reshape(-1)


def nms(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """Detectron's NMS of one set of boxes: kept indices, ascending."""
    return batched_nms(boxes, scores, torch.full((1,), boxes.shape[0], dtype=torch.int64, device=boxes.device), thresh)
