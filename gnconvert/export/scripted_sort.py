"""numpy 1.23's float32 sort order (Detectron's tie order) in TorchScript.

`gnconvert.inference.sorting` reproduces the order in which Detectron's numpy
put tied scores (sigmoids saturated at exactly 1.0 are common in frozen-BN
models): only numpy's classic introsort / introselect decide it.  This is
`inference.classic_sort` rewritten in the TorchScript subset (no closures, no
recursion), used only when ties can change the answer: with all values distinct
every sort gives the same order, and the fast torch sort is used.

One deliberate gap: introselect's median-of-medians fallback, taken when its
depth budget (2 log2 n partitions) runs out, uses median-of-3 inside (numpy
recurses there).  Ties make partitions balanced, so the budget holds in practice.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

def _less(a: float, b: float) -> bool:
    """numpy's float order: NaNs last."""
    return a < b or (b != b and a == a)


def _msb(n: int) -> int:
    depth = 0
    while n > 1:
        n = n >> 1
        depth += 1
    return depth


def _swap(t: List[int], a: int, b: int) -> None:
    tmp = t[a]
    t[a] = t[b]
    t[b] = tmp


def _sift(v: List[float], t: List[int], base: int, i: int, tmp: int, n: int) -> None:
    j = i << 1
    while j <= n:
        if j < n and _less(v[t[base + j]], v[t[base + j + 1]]):
            j += 1
        if _less(v[tmp], v[t[base + j]]):
            t[base + i] = t[base + j]
            i = j
            j += j
        else:
            break
    t[base + i] = tmp


def _heapsort(v: List[float], t: List[int], start: int, n: int) -> None:
    base = start - 1
    l = n >> 1
    while l > 0:
        _sift(v, t, base, l, t[base + l], n)
        l -= 1
    while n > 1:
        tmp = t[base + n]
        t[base + n] = t[base + 1]
        n -= 1
        _sift(v, t, base, 1, tmp, n)


def _quicksort(v: List[float], t: List[int]) -> None:
    num = len(t)
    if num < 2:
        return
    pl, pr = 0, num - 1
    stack_l: List[int] = []
    stack_r: List[int] = []
    stack_d: List[int] = []
    cdepth = _msb(num) * 2
    while True:
        if cdepth < 0:
            _heapsort(v, t, pl, pr - pl + 1)
        else:
            while pr - pl > 15:  # numpy's SMALL_QUICKSORT: insertion sort below
                pm = pl + ((pr - pl) >> 1)
                if _less(v[t[pm]], v[t[pl]]):
                    _swap(t, pm, pl)
                if _less(v[t[pr]], v[t[pm]]):
                    _swap(t, pr, pm)
                if _less(v[t[pm]], v[t[pl]]):
                    _swap(t, pm, pl)
                vp = v[t[pm]]
                pi, pj = pl, pr - 1
                _swap(t, pm, pj)
                while True:
                    pi += 1
                    while _less(v[t[pi]], vp):
                        pi += 1
                    pj -= 1
                    while _less(vp, v[t[pj]]):
                        pj -= 1
                    if pi >= pj:
                        break
                    _swap(t, pi, pj)
                _swap(t, pi, pr - 1)
                cdepth -= 1
                if pi - pl < pr - pi:
                    stack_l.append(pi + 1)
                    stack_r.append(pr)
                    stack_d.append(cdepth)
                    pr = pi - 1
                else:
                    stack_l.append(pl)
                    stack_r.append(pi - 1)
                    stack_d.append(cdepth)
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):
                vi = t[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and _less(vp, v[t[pj - 1]]):
                    t[pj] = t[pj - 1]
                    pj -= 1
                t[pj] = vi
        if len(stack_l) == 0:
            return
        pl, pr, cdepth = stack_l.pop(), stack_r.pop(), stack_d.pop()


def _dumb_select(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    for i in range(kth + 1):
        minidx, minval = i, v[t[off + i]]
        for k in range(i + 1, num):
            if _less(v[t[off + k]], minval):
                minidx, minval = k, v[t[off + k]]
        _swap(t, off + i, off + minidx)


def _median5(v: List[float], t: List[int], off: int) -> int:
    if _less(v[t[off + 1]], v[t[off]]):
        _swap(t, off + 1, off)
    if _less(v[t[off + 4]], v[t[off + 3]]):
        _swap(t, off + 4, off + 3)
    if _less(v[t[off + 3]], v[t[off]]):
        _swap(t, off + 3, off)
    if _less(v[t[off + 4]], v[t[off + 1]]):
        _swap(t, off + 4, off + 1)
    if _less(v[t[off + 2]], v[t[off + 1]]):
        _swap(t, off + 2, off + 1)
    if _less(v[t[off + 3]], v[t[off + 2]]):
        return 1 if _less(v[t[off + 3]], v[t[off + 1]]) else 3
    return 2


def _small_cases(v: List[float], t: List[int], off: int, num: int, kth: int) -> bool:
    """introselect's shortcuts (kth among the first three, or the last); True if done."""
    if kth < 3:
        _dumb_select(v, t, off, num, kth)
        return True
    if kth == num - 1:
        maxidx, maxval = 0, v[t[off]]
        for k in range(1, num):
            if not _less(v[t[off + k]], maxval):
                maxidx, maxval = k, v[t[off + k]]
        _swap(t, off + kth, off + maxidx)
        return True
    return False


def _median3_pivot(v: List[float], t: List[int], off: int, low: int, high: int) -> None:
    mid = low + (high - low) // 2
    if _less(v[t[off + high]], v[t[off + mid]]):
        _swap(t, off + high, off + mid)
    if _less(v[t[off + high]], v[t[off + low]]):
        _swap(t, off + high, off + low)
    if _less(v[t[off + low]], v[t[off + mid]]):
        _swap(t, off + low, off + mid)
    _swap(t, off + mid, off + low + 1)


def _partition(v: List[float], t: List[int], off: int, low: int, ll: int, hh: int) -> List[int]:
    """Unguarded partition about t[low]; returns [ll, hh] where the scans stopped."""
    pivot = v[t[off + low]]
    while True:
        ll += 1
        while _less(v[t[off + ll]], pivot):
            ll += 1
        hh -= 1
        while _less(pivot, v[t[off + hh]]):
            hh -= 1
        if hh < ll:
            break
        _swap(t, off + ll, off + hh)
    _swap(t, off + low, off + hh)
    return [ll, hh]


def _finish(v: List[float], t: List[int], off: int, low: int, high: int) -> None:
    if high == low + 1 and _less(v[t[off + high]], v[t[off + low]]):
        _swap(t, off + high, off + low)


def _select_median3(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    """introselect with median-of-3 pivots only (the medians' own selection, see module doc)."""
    if _small_cases(v, t, off, num, kth):
        return
    low, high = 0, num - 1
    while low + 1 < high:
        _median3_pivot(v, t, off, low, high)
        ll, hh = _partition(v, t, off, low, low + 1, high)
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll
    _finish(v, t, off, low, high)


def _select(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    """numpy's introselect on t[off:off+num]."""
    if _small_cases(v, t, off, num, kth):
        return
    low, high = 0, num - 1
    depth_limit = _msb(num) * 2
    while low + 1 < high:
        ll, hh = low + 1, high
        if depth_limit > 0 or hh - ll < 5:
            _median3_pivot(v, t, off, low, high)
        else:  # median of medians of 5
            sub, nmed = off + ll, (hh - ll) // 5
            for i in range(nmed):
                m = _median5(v, t, sub + 5 * i)
                _swap(t, sub + 5 * i + m, sub + i)
            if nmed > 2:
                _select_median3(v, t, sub, nmed, nmed // 2)
            _swap(t, off + ll + nmed // 2, off + low)
            ll -= 1
            hh += 1
        depth_limit -= 1
        ll, hh = _partition(v, t, off, low, ll, hh)
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll
    _finish(v, t, off, low, high)


def classic_argsort(values: Tensor) -> Tensor:
    """`np.argsort` (default kind) of a float32 vector as numpy 1.23 ordered it."""
    v: List[float] = values.reshape(-1).to(torch.float64).tolist()
    t: List[int] = list(range(len(v)))
    _quicksort(v, t)
    return torch.tensor(t, dtype=torch.int64, device=values.device)


def classic_argpartition(values: Tensor, kth: int) -> Tensor:
    """`np.argpartition(values, kth)` of a float32 vector as numpy 1.23 did it."""
    v: List[float] = values.reshape(-1).to(torch.float64).tolist()
    t: List[int] = list(range(len(v)))
    _select(v, t, 0, len(v), kth)
    return torch.tensor(t, dtype=torch.int64, device=values.device)


def _has_ties(sorted_values: Tensor) -> bool:
    return sorted_values.numel() > 1 and bool((sorted_values[1:] == sorted_values[:-1]).any())


def argsort(values: Tensor) -> Tensor:
    """Ascending order; numpy's tie order when there are ties."""
    sorted_values, order = torch.sort(values.reshape(-1))
    if _has_ties(sorted_values):
        return classic_argsort(values)
    return order


def top_k_descending(scores: Tensor, k: int) -> Tensor:
    """`sorting.top_k_descending`: the k best, best first, Detectron's tie order."""
    neg = -scores.reshape(-1)
    n = neg.shape[0]
    sorted_values, order = torch.sort(neg)
    if k <= 0 or k >= n:
        return classic_argsort(neg) if _has_ties(sorted_values) else order
    if not _has_ties(sorted_values[: k + 1]):
        return order[:k]
    inds = classic_argpartition(neg, k)[:k]
    return inds[classic_argsort(neg[inds])]


def nms_order(scores: Tensor) -> Tensor:
    """cython_nms's visiting order, `scores.argsort()[::-1]`."""
    return argsort(scores).flip(0)
