"""`gnconvert.inference.nms.batched_nms` as a traceable program: one padded IoU block per group
(no host-chosen chunks or bands) and the settling rounds in a while_loop.  The same suppression
edges, hence the same kept set."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from gnconvert.inference import sorting
from gnconvert.inference.boxes import pairwise_overlap_between


def settle(src: Tensor, dst: Tensor, n) -> Tensor:
    """`nms._settle`: the edges that can still decide something are masked, not dropped."""
    dev = src.device
    state = (torch.zeros((n,), dtype=torch.bool, device=dev), torch.zeros((n,), dtype=torch.bool, device=dev),
             torch.ones((n,), dtype=torch.bool, device=dev), torch.ones_like(src, dtype=torch.bool))

    def undecided_left(kept, removed, undecided, live):
        return undecided.any()

    def round_(kept, removed, undecided, live):
        n = kept.shape[0]  # not the enclosing size (see sorting.classic_argsort_segments)
        blocked = torch.zeros((n,), dtype=torch.bool, device=dev)
        blocked = blocked.index_put((dst[live],), torch.ones_like(dst[live], dtype=torch.bool))
        newly_kept = undecided & ~blocked
        kept = kept | newly_kept
        undecided = undecided & ~newly_kept
        hit = torch.zeros((n,), dtype=torch.bool, device=dev)
        reached = dst[live & newly_kept[src]]
        hit = hit.index_put((reached,), torch.ones_like(reached, dtype=torch.bool))
        removed = removed | (undecided & hit)
        undecided = undecided & ~hit
        return kept, removed, undecided, live & undecided[dst] & ~removed[src]

    return while_loop(undecided_left, round_, state)[0]


def batched_nms(boxes: Tensor, scores: Tensor, lengths: Tensor, thresh: float) -> Tensor:
    """Kept row indices, ascending, of NMS within each consecutive group (see nms.batched_nms)."""
    n = boxes.shape[0]
    dev = boxes.device
    lengths = lengths.to(device=dev, dtype=torch.int64)
    order = sorting.nms_order_segments(scores, lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    longest = torch.cat((lengths, lengths.new_zeros((1,)))).max().item()
    torch._check(longest >= 0)
    torch._check(longest <= n)
    slot = torch.arange(longest, device=dev)
    valid = slot[None, :] < lengths[:, None]
    pos = torch.where(valid, starts[:, None] + slot[None, :], torch.zeros_like(valid, dtype=torch.int64))
    padded = boxes[order[pos]].to(torch.float32)
    far = (slot.to(torch.float32) + 1.0) * -1.0e7
    padded = torch.where(valid[:, :, None], padded, torch.stack((far, far, far + 1, far + 1), 1)[None])
    edges = torch.nonzero((pairwise_overlap_between(padded, padded) >= thresh).triu_(1))
    kept = settle(pos[edges[:, 0], edges[:, 1]], pos[edges[:, 0], edges[:, 2]], n)
    keep = torch.zeros((n,), dtype=torch.bool, device=dev)
    keep[order] = kept
    return torch.nonzero(keep).reshape(-1)
