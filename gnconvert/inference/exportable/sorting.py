"""numpy 1.23's argsort / argpartition order (see gnconvert.inference.sorting) as traceable loops."""
from __future__ import annotations

from typing import Any, List

import torch
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from gnconvert.inference import sorting as eager

FALLBACK = "numpy fallback (introsort heapsort / introselect median of medians) not exported; run gnconvert predict"


def keys(values: Tensor) -> Tensor:
    """What the sorts compare, without a branch on NaNs: float64 (exact for float32) with +inf
    moved to 1e300 and NaN to 2e300, so NaNs sort last and tie, as numpy orders float32."""
    v = values.reshape(-1)
    wide = v.to(torch.float64)
    wide = torch.where(torch.isposinf(wide), torch.full_like(wide, 1e300), wide)
    return torch.where(torch.isnan(wide), torch.full_like(wide, 2e300), wide)


def size_of(x: Tensor, dim: int = 0) -> Tensor:
    """x.shape[dim] as a 0-d int64 tensor (a traced size, no Python int)."""
    line: List[Any] = [0] * x.dim()
    line[dim] = slice(None)
    return torch.ones_like(x[tuple(line)], dtype=torch.int64).sum()


def msb(m: Tensor) -> Tensor:
    """floor(log2(m)) for every m >= 1 (numpy's npy_get_msb), in integer arithmetic.  The powers
    are shifts, not `pow(2, n)`: AOTInductor runs an integer pow through a C shim that takes the
    base as a double and returns float32 (then read as int64: a garbage depth limit)."""
    one = torch.ones((62,), dtype=torch.int64, device=m.device)
    powers = torch.bitwise_left_shift(one, torch.arange(1, 63, device=m.device, dtype=torch.int64))
    return (m[:, None] >= powers[None, :]).sum(1)


def _pack(x: Tensor, n) -> Tensor:
    """x (k <= n entries) at the front of an n-long buffer."""
    k = x.shape[0]
    torch._check(k <= n)
    out = torch.zeros((n,), dtype=x.dtype, device=x.device)
    out[:k] = x
    return out


def classic_argsort_segments(key: Tensor, starts: Tensor, lengths: Tensor, tied: Tensor) -> Tensor:
    """`sorting._classic_argsort_segments` with its partition passes in a while_loop."""
    n = key.shape[0]
    dev = key.device
    keep = lengths > 0
    lo0 = starts[keep]
    hi0 = lo0 + lengths[keep] - 1
    state = (torch.arange(n, device=dev), torch.zeros((n,), dtype=torch.bool, device=dev),
             _pack(lo0, n), _pack(hi0, n), _pack(msb(lengths[keep]) * 2, n),
             torch.ones((n,), dtype=torch.bool, device=dev), size_of(lo0), torch.zeros((), dtype=torch.bool, device=dev))

    def more(t, boundary, lo, hi, depth, check, count, gave_up):
        return count > 0

    def one_pass(t, boundary, lo, hi, depth, check, count, gave_up):
        n = t.shape[0]  # not the enclosing size: nested HOP tracing cannot lift a closed-over SymInt
        t, boundary = t.clone(), boundary.clone()
        listed = torch.arange(n, device=dev) < count
        lo, hi, depth, check = lo[listed], hi[listed], depth[listed], check[listed]
        open_ = eager._segment_counts(tied[t], lo, hi) > 0
        heap = check & (depth < 0) & open_
        active = open_ & ~heap & (hi - lo > 15)
        boundary = boundary.index_put((lo[~active],), torch.ones_like(lo[~active], dtype=torch.bool))
        t, lo, hi, depth, check = eager.partition_pass(key, t, boundary, lo[active], hi[active], depth[active])
        return (t, boundary, _pack(lo, n), _pack(hi, n), _pack(depth, n), _pack(check, n), size_of(lo),
                gave_up | heap.any())

    t, boundary, _, _, _, _, _, gave_up = while_loop(more, one_pass, state)
    torch._assert_async(~gave_up, FALLBACK)
    block = torch.cumsum(boundary.to(torch.int64), 0)  # a block's label: the boundaries up to it
    by_value = torch.sort(key[t], stable=True)[1]
    by_block = torch.sort(block[by_value], stable=True)[1]
    return t[by_value[by_block]]


def argsort_segments(values: Tensor, lengths: Tensor) -> Tensor:
    """`sorting.argsort_segments`: the classic algorithm always runs (with no ties it finishes in
    one pass and gives the only correct order, the one the eager shortcut returns)."""
    key = keys(values)
    lengths = lengths.to(device=key.device, dtype=torch.int64)
    order, eq = eager.order_and_ties(key, lengths)
    return classic_argsort_segments(key, torch.cumsum(lengths, 0) - lengths, lengths, eager.tie_flags(eq, order))


def argsort(values: Tensor) -> Tensor:
    """`np.argsort(values)` as numpy 1.23 orders float32 ties."""
    return argsort_segments(values, size_of(values).reshape(1))


def _at(x: Tensor, i: Tensor) -> Tensor:
    """x[i] for a 0-d index tensor, as a gather: plain indexing would turn i into an unbacked
    Python int, which a while_loop body cannot create."""
    return x.gather(0, torch.clamp(i, 0, x.shape[0] - 1).reshape(1)).reshape(())


def _put(x: Tensor, i: Tensor, v: Tensor) -> Tensor:
    """x with x[i] = v (0-d i and v), out of place."""
    return x.scatter(0, i.reshape(1), v.reshape(1))


def _introselect(key: Tensor, kth: int) -> Tensor:
    """`sorting.argpartition`'s median-of-3 introselect loop (kth >= 3), one
    narrowing step per while_loop iteration, every scan over the whole array with masks."""
    n = key.shape[0]
    dev = key.device
    zero = torch.zeros((), dtype=torch.int64, device=dev)
    high = torch.where(size_of(key) > kth, size_of(key) - 1, zero)  # kth >= n: no loop, the identity
    state = (torch.arange(n, device=dev), zero, high, msb(size_of(key).reshape(1))[0] * 2,
             torch.zeros((), dtype=torch.bool, device=dev))

    def more(t, low, high, depth_limit, gave_up):
        return low + 1 < high

    def step(t, low, high, depth_limit, gave_up):
        pos = torch.arange(t.shape[0], device=dev)
        gave_up = gave_up | ((depth_limit <= 0) & (high - low - 1 >= 5))
        mid = low + torch.div(high - low, 2, rounding_mode="floor")
        a, b, h = _at(t, low), _at(t, mid), _at(t, high)
        ka, kb, kh = _at(key, a), _at(key, b), _at(key, h)
        sw = kh < kb
        b, h, kb, kh = torch.where(sw, h, b), torch.where(sw, b, h), torch.where(sw, kh, kb), torch.where(sw, kb, kh)
        sw = kh < ka
        a, h, ka, kh = torch.where(sw, h, a), torch.where(sw, a, h), torch.where(sw, kh, ka), torch.where(sw, ka, kh)
        sw = ka < kb
        a, b, ka, kb = torch.where(sw, b, a), torch.where(sw, a, b), torch.where(sw, kb, ka), torch.where(sw, ka, kb)
        t = _put(t, low, a)
        t = _put(t, high, h)
        t = _put(t, mid, _at(t, low + 1))
        t = _put(t, low + 1, b)
        pivot = _at(key, a)
        c = key[t]
        inside = (pos >= low + 1) & (pos <= high)
        lefts = pos[inside & (pos >= low + 2) & ~(c < pivot)]
        rights = pos[inside & (pos <= high - 1) & ~(pivot < c)].flip(0)
        m = torch.minimum(size_of(lefts), size_of(rights))
        rank = torch.arange(lefts.shape[0], device=dev)
        mate = rights[torch.clamp(rank, max=rights.shape[0] - 1)]
        pair = (rank < m) & (lefts <= mate)
        swaps = pair.sum()
        pa, pb = lefts[pair], mate[pair]
        ta, tb = t[pa], t[pb]
        t = t.index_put((pa,), tb).index_put((pb,), ta)
        # where the scans cross (see sorting.argpartition)
        ll, hh = _at(lefts, swaps), _at(rights, swaps)
        prev = torch.clamp(swaps - 1, min=0)
        back = torch.where(_at(lefts, prev) == _at(rights, prev), swaps - 2, swaps - 1)
        use = (swaps > 0) & (back >= 0)
        back = torch.clamp(back, min=0)
        ll = torch.where(use, torch.minimum(ll, _at(rights, back)), ll)
        hh = torch.where(use, torch.maximum(hh, _at(lefts, back)), hh)
        tl0, th0 = _at(t, low), _at(t, hh)
        t = _put(_put(t, low, th0), hh, tl0)
        high = torch.where(hh >= kth, hh - 1, high)
        low = torch.where(hh <= kth, ll, low)
        return t, low, high, depth_limit - 1, gave_up

    t, low, high, _, gave_up = while_loop(more, step, state)
    torch._assert_async(~gave_up, FALLBACK)
    last = torch.clamp(high, max=n - 1)
    swap = (high == low + 1) & (_at(key, _at(t, last)) < _at(key, _at(t, low)))
    tl1, th1 = _at(t, low), _at(t, last)
    t = _put(t, low, torch.where(swap, th1, tl1))
    return _put(t, last, torch.where(swap, tl1, th1))


def _last_maximum_last(key: Tensor, kth: int) -> Tensor:
    """numpy's kth == n - 1 case: the last maximum swaps into the last place (indices kept in
    range for the other sizes, whose result is not used)."""
    n = key.shape[0]
    t = torch.arange(n, device=key.device)
    j = (n - 1) - torch.argmax(key.flip(0))
    k = torch.clamp(torch.full_like(j, kth), max=n - 1)
    t[k] = j
    t[j] = k
    return t


def argpartition(values: Tensor, kth: int) -> Tensor:
    """`np.argpartition(values, kth)` for kth >= 3 (the sizes the proposal op meets); for
    kth >= n, the identity (what the caller wants then: no partition)."""
    if kth < 3:
        raise NotImplementedError("exported argpartition needs kth >= 3")
    key = keys(values)
    last = size_of(key) - 1 == kth
    return torch.where(last, _last_maximum_last(key, kth), _introselect(key, kth))


def top_k_descending(scores: Tensor, k: int) -> Tensor:
    """`sorting.top_k_descending`, both ways computed and one chosen by data (a torch.cond around
    loops with traced sizes does not trace): numpy's argpartition + argsort when the best k + 1
    hold a tie or k covers everything (then the partition is the identity, and the argsort of
    it all is what Detectron does), else the plain sort."""
    neg = -scores.reshape(-1)
    if k <= 0:
        return argsort(neg)
    key = keys(neg)
    sorted_key, order = torch.sort(key, stable=True)
    first = torch.arange(sorted_key.shape[0] - 1, device=key.device) < k
    numpy_way = ((sorted_key[1:] == sorted_key[:-1]) & first).any() | (size_of(neg) <= k)
    best = argpartition(neg, k)[:k]
    return torch.where(numpy_way, best[argsort(neg[best])], order[:k])

