"""Detectron's sort decisions in torch: numpy 1.23's order, ties included.

Detectron picks proposals and visits NMS candidates in the order that numpy's
default `argsort` (introsort) and `argpartition` (introselect) produce on float32
arrays.  With tied scores (sigmoids saturated at exactly 1.0 are common) that
order is an artefact of the algorithm, not of the values, and numpy >= 1.25
orders float32 ties differently (SIMD sorts).  Here the classic algorithms are
reproduced on tensors:

- with no ties every correct sort gives the same answer, so `torch.sort` /
  `torch.topk` decide and nothing else runs;
- with ties, the classic algorithms run vectorised: one Hoare partition is a few
  whole-tensor operations (the i-th element that stops the left scan is swapped
  with the i-th element that stops the right scan, for as long as the two scans
  have not crossed), so quicksort costs one pass per level of recursion over all
  open partitions at once, and introselect one pass per narrowing step.  A
  partition holding no tied values is finished at once (any sort orders it the
  same), and numpy's insertion sort of partitions up to 16 elements is stable, so
  one stable sort by (partition, value) finishes everything at the end.

Comparisons are on the float values themselves (numpy's `<`, so -0.0 ties 0.0),
or, when NaNs are present, on integer codes that put NaNs last and tie them, as
numpy does.  Rare fallbacks run the scalar algorithm on Python lists: the heapsort
that introsort switches to past 2*log2(n) levels, and introselect's
median-of-medians pivot, taken after 2*log2(n) partitions that barely narrowed the
range.  Inside it, numpy selects the median of the medians with a nested
introselect that could itself fall back to median-of-medians; here that nested
selection keeps median-of-3 pivots (TorchScript cannot recurse), so exactness
there needs the medians' own partitions not to stall for 2*log2(n/5) steps too.

Host syncs: without ties, one (the tie check); with ties, a few scalar reads per
partition pass (loop control).  Everything is TorchScript-able.
"""
from __future__ import annotations

from typing import List, Tuple, cast

import torch
from torch import Tensor

from gnconvert.inference import exportable
from gnconvert.inference.sorting_scalar import heapsort, msb, select_loop


def _exclusive_cumsum(x: Tensor) -> Tensor:
    return torch.cumsum(x, 0) - x


def _counts(ids: Tensor, num: int) -> Tensor:
    """How often each of 0..num-1 occurs in ids (bincount with a size known in advance)."""
    return torch.zeros((num,), dtype=torch.int64, device=ids.device).index_add_(0, ids, torch.ones_like(ids))


def segment_ids(lengths: Tensor) -> Tensor:
    """[0]*l0 + [1]*l1 + ...: the segment of each position (torch.repeat_interleave, without its cost)."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():  # a traced size, not a Python int
            total = cast(int, lengths.sum().item())  # an unbacked SymInt
            torch._check(total >= 0)
            marks = torch.zeros((total + 1,), dtype=torch.int64, device=lengths.device)
            marks.index_add_(0, torch.cumsum(lengths, 0), torch.ones_like(lengths))
            return torch.cumsum(marks, 0)[:total]
    total = int(lengths.sum())
    marks = torch.zeros((total + 1,), dtype=torch.int64, device=lengths.device)
    marks.index_add_(0, torch.cumsum(lengths, 0), torch.ones_like(lengths))
    return torch.cumsum(marks, 0)[:total]


def keys(values: Tensor) -> Tensor:
    """What the sorts compare: the values, or when NaNs are present int64 codes ordered and tied
    as numpy orders the floats (NaNs last, all tied)."""
    v = values.reshape(-1)
    if not bool(torch.isnan(v).any()):
        return v
    sorted_v, order = torch.sort(v)
    step = sorted_v[1:] != sorted_v[:-1]
    nan = torch.isnan(sorted_v)
    step = step & ~(nan[1:] & nan[:-1])
    ranked = torch.cat((torch.zeros((1,), dtype=torch.int64, device=v.device), torch.cumsum(step.to(torch.int64), 0)))
    out = torch.empty_like(ranked)
    out[order] = ranked
    return out


def tie_flags(eq: Tensor, order: Tensor) -> Tensor:
    """Which elements tie a neighbour, from `eq`: whether each neighbouring pair in sorted order ties."""
    no = torch.zeros((1,), dtype=torch.bool, device=eq.device)
    tied = torch.empty((order.shape[0],), dtype=torch.bool, device=eq.device)
    tied[order] = torch.cat((eq, no)) | torch.cat((no, eq))
    return tied


def order_and_ties(key: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """The stable order by (segment, key), and whether each neighbouring pair in it ties within a segment."""
    seg = segment_ids(lengths)
    by_value = torch.sort(key, stable=True)[1]
    order = by_value[torch.sort(seg[by_value], stable=True)[1]]
    sorted_key, sorted_seg = key[order], seg[order]
    return order, (sorted_key[1:] == sorted_key[:-1]) & (sorted_seg[1:] == sorted_seg[:-1])


# --------------------------------------------------------------------------- vectorised introsort
def _segment_counts(flags: Tensor, first: Tensor, last: Tensor) -> Tensor:
    """How many flags are set in each [first, last] range of positions."""
    cum = torch.cumsum(flags.to(torch.int64), 0)
    return cum[last] - cum[first] + flags[first].to(torch.int64)


def partition_pass(key: Tensor, t: Tensor, boundary: Tensor, pl: Tensor, pr: Tensor, d: Tensor
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One Hoare partition of every open partition [pl, pr] (in position order) at once: t and
    boundary updated in place -> t and the partitions left open (lo, hi, depth, check)."""
    dev = key.device
    num_seg = pl.shape[0]

    # median of three: (pl, pm, pr) put in order, pivot parked at pr - 1
    pm = pl + ((pr - pl) >> 1)
    ta, tb, tc = t[pl], t[pm], t[pr]
    sw = key[tb] < key[ta]
    ta, tb = torch.where(sw, tb, ta), torch.where(sw, ta, tb)
    sw = key[tc] < key[tb]
    tb, tc = torch.where(sw, tc, tb), torch.where(sw, tb, tc)
    sw = key[tb] < key[ta]
    ta, tb = torch.where(sw, tb, ta), torch.where(sw, ta, tb)
    t[pl] = ta
    t[pr] = tc
    t[pm] = t[pr - 1]
    t[pr - 1] = tb

    # every position of the open partitions, partition by partition
    lens = pr - pl + 1
    seg = segment_ids(lens)
    pos = torch.arange(seg.shape[0], device=dev) + (pl - _exclusive_cumsum(lens))[seg]
    c = key[t[pos]]
    vp = key[tb][seg]
    lower, upper = pl[seg], pr[seg]
    left = (pos > lower) & (pos < upper) & ~(c < vp)  # where `do ++pi while v[pi] < vp` stops
    right = (pos < upper - 1) & ~(vp < c)             # where `do --pj while vp < v[pj]` stops
    lefts, rights = pos[left], pos[right]               # ascending
    lseg = seg[left]
    count_l = _counts(lseg, num_seg)
    count_r = _counts(seg[right], num_seg)
    off_l = _exclusive_cumsum(count_l)
    off_r = _exclusive_cumsum(count_r)
    # the m-th left stop (ascending) meets the m-th right stop counted from the top
    rank = torch.arange(lefts.shape[0], device=dev) - off_l[lseg]
    has_partner = rank < count_r[lseg]
    mate = off_r[lseg] + count_r[lseg] - 1 - rank
    partner = rights[torch.where(has_partner, mate, torch.zeros_like(mate))]
    swapped = has_partner & (lefts < partner)
    a_pos, b_pos = lefts[swapped], partner[swapped]
    ta, tb = t[a_pos], t[b_pos]
    t[a_pos] = tb
    t[b_pos] = ta
    swaps = _counts(lseg[swapped], num_seg)
    # where the scans cross: the next left stop, or the last swapped right stop if nearer
    pi = lefts[off_l + swaps]
    back = rights[torch.clamp(off_r + count_r - swaps, max=rights.shape[0] - 1)]
    pi = torch.where(swaps > 0, torch.minimum(pi, back), pi)
    tp, tk = t[pi], t[pr - 1]
    t[pr - 1] = tp
    t[pi] = tk
    boundary.index_put_((pi,), torch.ones_like(pi, dtype=torch.bool))  # no constant: exportable in a loop

    # the smaller side goes on at once (no depth check), the larger waits on the stack
    left_smaller = (pi - pl) < (pr - pi)
    lo = torch.stack((pl, pi + 1), 1).reshape(-1)  # stays in position order
    hi = torch.stack((pi - 1, pr), 1).reshape(-1)
    depth = torch.stack((d - 1, d - 1), 1).reshape(-1)
    check = torch.stack((~left_smaller, left_smaller), 1).reshape(-1)
    nonempty = hi >= lo
    lo, hi, depth, check = lo[nonempty], hi[nonempty], depth[nonempty], check[nonempty]
    return t, lo, hi, depth, check


def _classic_argsort_segments(key: Tensor, starts: Tensor, lengths: Tensor, tied: Tensor) -> Tensor:
    """numpy's argsort (introsort) of every segment key[start:start+length], all segments at once.

    Returns a permutation t of 0..n-1 whose segment ranges hold each segment's indices in
    numpy's order.  `tied` flags the elements whose value occurs more than once.
    """
    n = key.shape[0]
    dev = key.device
    t = torch.arange(n, device=dev)
    keep = lengths > 0
    lo = starts[keep]
    hi = starts[keep] + lengths[keep] - 1
    sizes: List[int] = lengths[keep].tolist()
    depth = torch.tensor([msb(m) * 2 for m in sizes], dtype=torch.int64, device=dev)
    check = torch.ones_like(lo, dtype=torch.bool)
    boundary = torch.zeros((n,), dtype=torch.bool, device=dev)  # first position of each finished block
    while lo.numel() > 0:
        # a partition without tied values sorts the same whatever the algorithm: finished
        open_ = _segment_counts(tied[t], lo, hi) > 0
        heap = check & (depth < 0) & open_
        if bool(heap.any()):  # introsort gave up on these: numpy heapsorts them (rare)
            heap_lo: List[int] = lo[heap].tolist()
            heap_hi: List[int] = hi[heap].tolist()
            values: List[float] = key.to(torch.float64).tolist()
            for a, b in zip(heap_lo, heap_hi):
                tl: List[int] = t[a: b + 1].tolist()
                heapsort(values, tl)
                t[a: b + 1] = torch.tensor(tl, dtype=torch.int64, device=dev)
        active = open_ & ~heap & (hi - lo > 15)  # numpy's SMALL_QUICKSORT: up to 16 elements, insertion sort
        boundary[lo[~active]] = True
        if not bool(active.any()):
            break
        t, lo, hi, depth, check = partition_pass(key, t, boundary, lo[active], hi[active], depth[active])

    # insertion sort of every finished block is stable: one stable sort by (block, value)
    block = torch.cummax(torch.where(boundary, torch.arange(n, device=dev), torch.zeros_like(t)), 0)[0]
    by_value = torch.sort(key[t], stable=True)[1]
    by_block = torch.sort(block[by_value], stable=True)[1]
    return t[by_value[by_block]]


# --------------------------------------------------------------------------- public
def argsort_segments(values: Tensor, lengths: Tensor) -> Tensor:
    """numpy's `argsort` of each consecutive segment of `values` (lengths sum to its size),
    as global indices: segment s's range holds its indices in numpy 1.23's order."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("sorting").argsort_segments(values, lengths)
    key = keys(values)
    if key.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64, device=key.device)
    lengths = lengths.to(device=key.device, dtype=torch.int64)
    order, eq = order_and_ties(key, lengths)
    if not bool(eq.any()):
        return order
    return _classic_argsort_segments(key, _exclusive_cumsum(lengths), lengths, tie_flags(eq, order))


def argsort(values: Tensor) -> Tensor:
    """`np.argsort(values)` (default kind) as numpy 1.23 orders float32 ties."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("sorting").argsort(values)
    key = keys(values)
    n = key.shape[0]
    sorted_key, order = torch.sort(key)
    eq = sorted_key[1:] == sorted_key[:-1]
    if not bool(eq.any()):
        return order
    return _classic_argsort_segments(key, torch.zeros((1,), dtype=torch.int64, device=key.device),
                                     torch.full((1,), n, dtype=torch.int64, device=key.device), tie_flags(eq, order))


def _swap(t: Tensor, i: int, j: int) -> None:
    """Exchange t[i] and t[j] in place."""
    ti, tj = t[i].clone(), t[j].clone()
    t[i] = tj
    t[j] = ti


def argpartition(values: Tensor, kth: int) -> Tensor:
    """`np.argpartition(values, kth)` as numpy 1.23 did it for float32 (introselect)."""
    key = keys(values)
    n = key.shape[0]
    if kth < 0:
        kth += n
    if kth < 0 or kth >= n:
        raise ValueError("kth out of bounds")
    dev = key.device
    t = torch.arange(n, device=dev)
    if kth < 3:  # numpy's selection sort of the first kth + 1
        for i in range(kth + 1):
            _swap(t, i, i + int(torch.argmin(key[t[i:]])))
        return t
    if kth == n - 1:  # the last maximum goes last
        _swap(t, kth, n - 1 - int(torch.argmax(key.flip(0))))
        return t
    low, high = 0, n - 1
    depth_limit = msb(n) * 2
    while low + 1 < high:
        if depth_limit <= 0 and high - low - 1 >= 5:  # median of medians: finish as numpy does, on lists
            tl: List[int] = t.tolist()
            values_list: List[float] = key.to(torch.float64).tolist()
            select_loop(values_list, tl, 0, low, high, kth, depth_limit)
            return torch.tensor(tl, dtype=torch.int64, device=dev)
        # median of three at (low, mid, high); the smallest goes to low + 1, the median to low
        mid = low + (high - low) // 2
        tri: List[int] = t[torch.tensor([low, mid, high], device=dev)].tolist()
        a, b, h = tri[0], tri[1], tri[2]
        three: List[float] = key[torch.tensor(tri, device=dev)].to(torch.float64).tolist()
        ka, kb, kh = three[0], three[1], three[2]
        if kh < kb:
            b, h, kb, kh = h, b, kh, kb
        if kh < ka:
            a, h, ka, kh = h, a, kh, ka
        if ka < kb:
            a, b, ka, kb = b, a, kb, ka
        t[low] = a
        t[high] = h
        t[mid] = t[low + 1]
        t[low + 1] = b
        depth_limit -= 1
        pivot = key[a]
        c = key[t[low + 1: high + 1]]
        pos = torch.arange(low + 1, high + 1, device=dev)
        lefts = pos[(pos >= low + 2) & ~(c < pivot)]
        rights = pos[(pos <= high - 1) & ~(pivot < c)].flip(0)
        m = min(lefts.shape[0], rights.shape[0])
        swaps = int((lefts[:m] <= rights[:m]).sum())
        if swaps > 0:
            pa, pb = lefts[:swaps], rights[:swaps]
            ta, tb = t[pa], t[pb]
            t[pa] = tb
            t[pb] = ta
        # where the scans cross: the next stop, or the nearest swapped element of the other side
        # (a last swap of an element with itself moves that one back a step)
        ends: List[int] = torch.stack((lefts[max(swaps - 2, 0): swaps + 1],
                                       rights[max(swaps - 2, 0): swaps + 1])).reshape(-1).tolist()
        width = len(ends) // 2
        ll, hh = ends[width - 1], ends[2 * width - 1]
        if swaps > 0:
            last = width - 2
            if ends[last] == ends[width + last]:
                last -= 1
            if last >= 0:
                ll = min(ll, ends[width + last])
                hh = max(hh, ends[last])
        _swap(t, low, hh)
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll
    if high == low + 1 and bool(key[t[high]] < key[t[low]]):
        _swap(t, low, high)
    return t


def top_k_descending(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best scores, best first, as Detectron's proposal op picks its pre-NMS
    top-k: `argpartition(-s, k)[:k]` re-sorted by `argsort`, or one `argsort(-s)` when k
    covers everything (k <= 0 too)."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("sorting").top_k_descending(scores, k)
    neg = -scores.reshape(-1)
    if k <= 0 or k >= neg.shape[0]:
        return argsort(neg)
    best, order = torch.topk(keys(neg), k + 1, largest=False, sorted=True)
    if not bool((best[1:] == best[:-1]).any()):
        return order[:k]
    inds = argpartition(neg, k)[:k]
    return inds[argsort(neg[inds])]


def nms_order(scores: Tensor) -> Tensor:
    """cython_nms's visiting order, `scores.argsort()[::-1]`."""
    return argsort(scores).flip(0)


def nms_order_segments(scores: Tensor, lengths: Tensor) -> Tensor:
    """`nms_order` of every consecutive segment, as global indices.  Traceable: under torch.export the
    shortcut for already-descending input is skipped (the mirrored argsort gives that order too:
    without ties there is one order)."""
    lengths = lengths.to(device=scores.device, dtype=torch.int64)
    seg = segment_ids(lengths)
    n = seg.shape[0]
    # already strictly descending within every segment (proposals come best first): that order
    if not exportable.exporting() and (n < 2 or bool(((scores[1:] < scores[:-1]) | (seg[1:] != seg[:-1])).all())):
        return torch.arange(n, device=scores.device)
    order = argsort_segments(scores, lengths)
    starts = _exclusive_cumsum(lengths)
    pos = torch.arange(order.shape[0], device=order.device)
    mirrored = starts[seg] + (starts[seg] + lengths[seg] - 1 - pos)
    return order[mirrored]
