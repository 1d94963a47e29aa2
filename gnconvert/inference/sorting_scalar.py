"""numpy's classic sorts on Python lists, for the rare cases the vectorised `sorting` hands over:
the heapsort introsort switches to after 2*log2(n) levels, and introselect's narrowing loop once
its median-of-3 pivots have stalled and numpy takes medians of five.  TorchScript-able; slow
(one Python step per element), which is why they run only there."""
from __future__ import annotations

from typing import List


def msb(n: int) -> int:
    """floor(log2(n)) for n >= 1 (numpy's npy_get_msb)."""
    depth = 0
    while n > 1:
        n = n >> 1
        depth += 1
    return depth


def _swap(t: List[int], a: int, b: int) -> None:
    tmp = t[a]
    t[a] = t[b]
    t[b] = tmp


def heapsort(v: List[float], t: List[int]) -> None:
    """numpy's aheapsort of all of t (a 1-based heap)."""
    n = len(t)
    base = -1
    for k in range(n >> 1, 0, -1):
        _sift(v, t, base, k, t[base + k], n)
    while n > 1:
        tmp = t[base + n]
        t[base + n] = t[base + 1]
        n -= 1
        _sift(v, t, base, 1, tmp, n)


def _sift(v: List[float], t: List[int], base: int, i: int, tmp: int, n: int) -> None:
    j = i << 1
    while j <= n:
        if j < n and v[t[base + j]] < v[t[base + j + 1]]:
            j += 1
        if v[tmp] < v[t[base + j]]:
            t[base + i] = t[base + j]
            i = j
            j += j
        else:
            break
    t[base + i] = tmp


def _median5(v: List[float], t: List[int], off: int) -> int:
    if v[t[off + 1]] < v[t[off]]:
        _swap(t, off + 1, off)
    if v[t[off + 4]] < v[t[off + 3]]:
        _swap(t, off + 4, off + 3)
    if v[t[off + 3]] < v[t[off]]:
        _swap(t, off + 3, off)
    if v[t[off + 4]] < v[t[off + 1]]:
        _swap(t, off + 4, off + 1)
    if v[t[off + 2]] < v[t[off + 1]]:
        _swap(t, off + 2, off + 1)
    if v[t[off + 3]] < v[t[off + 2]]:
        return 1 if v[t[off + 3]] < v[t[off + 1]] else 3
    return 2


def _median3_pivot(v: List[float], t: List[int], off: int, low: int, high: int) -> None:
    mid = low + (high - low) // 2
    if v[t[off + high]] < v[t[off + mid]]:
        _swap(t, off + high, off + mid)
    if v[t[off + high]] < v[t[off + low]]:
        _swap(t, off + high, off + low)
    if v[t[off + low]] < v[t[off + mid]]:
        _swap(t, off + low, off + mid)
    _swap(t, off + mid, off + low + 1)


def _select_medians(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    """introselect of the medians of five, with median-of-3 pivots only (numpy would recurse
    into the medians' median of medians too; TorchScript cannot recurse)."""
    if kth < 3:  # introselect's shortcuts: kth among the first three, or the last
        for i in range(kth + 1):
            minidx, minval = i, v[t[off + i]]
            for k in range(i + 1, num):
                if v[t[off + k]] < minval:
                    minidx, minval = k, v[t[off + k]]
            _swap(t, off + i, off + minidx)
        return
    if kth == num - 1:
        maxidx, maxval = 0, v[t[off]]
        for k in range(1, num):
            if not v[t[off + k]] < maxval:
                maxidx, maxval = k, v[t[off + k]]
        _swap(t, off + kth, off + maxidx)
        return
    low, high = 0, num - 1
    while low + 1 < high:
        _median3_pivot(v, t, off, low, high)
        low, high = _narrow(v, t, off, low, high, low + 1, high, kth)
    _finish_select(v, t, off, low, high)


def _narrow(v: List[float], t: List[int], off: int, low: int, high: int, ll: int, hh: int, kth: int) -> List[int]:
    """One introselect partition about t[low], and the part of [low, high] that still holds kth."""
    pivot = v[t[off + low]]
    while True:
        ll += 1
        while v[t[off + ll]] < pivot:
            ll += 1
        hh -= 1
        while pivot < v[t[off + hh]]:
            hh -= 1
        if hh < ll:
            break
        _swap(t, off + ll, off + hh)
    _swap(t, off + low, off + hh)
    if hh >= kth:
        high = hh - 1
    if hh <= kth:
        low = ll
    return [low, high]


def _finish_select(v: List[float], t: List[int], off: int, low: int, high: int) -> None:
    if high == low + 1 and v[t[off + high]] < v[t[off + low]]:
        _swap(t, off + high, off + low)


def select_loop(v: List[float], t: List[int], off: int, low: int, high: int, kth: int, depth_limit: int) -> None:
    """introselect's narrowing loop from (low, high) on; median-of-medians pivots where numpy takes them."""
    while low + 1 < high:
        ll, hh = low + 1, high
        if depth_limit > 0 or hh - ll < 5:
            _median3_pivot(v, t, off, low, high)
        else:  # median of the medians of five
            sub, nmed = off + ll, (hh - ll) // 5
            for i in range(nmed):
                m = _median5(v, t, sub + 5 * i)
                _swap(t, sub + 5 * i + m, sub + i)
            if nmed > 2:
                _select_medians(v, t, sub, nmed, nmed // 2)
            _swap(t, off + ll + nmed // 2, off + low)
            ll -= 1
            hh += 1
        depth_limit -= 1
        low, high = _narrow(v, t, off, low, high, ll, hh, kth)
    _finish_select(v, t, off, low, high)
