"""numpy's classic argsort (introsort) and argpartition (introselect), in Python.

The same algorithms numpy 1.23 ran for float32 and still runs for longdouble:
median-of-3 quicksort with insertion sort below 16 elements and a heapsort
fallback at depth 2*log2(n); median-of-3 quickselect with a median-of-medians
fallback.  Only the order in which tied values come out depends on these details,
which is why `sorting` needs them.  Slow (pure Python): used where longdouble
cannot stand in for them, and by the tests as an independent reference.
"""
from __future__ import annotations

from typing import List

import numpy as np

_SMALL_QUICKSORT = 15


def _less(a: float, b: float) -> bool:
    # numpy's float ordering: NaNs sort last
    return a < b or (b != b and a == a)


def _msb(n: int) -> int:
    return n.bit_length() - 1 if n > 0 else 0


def argsort(values: np.ndarray) -> np.ndarray:
    v: List[float] = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    t = list(range(len(v)))
    _aquicksort(v, t)
    return np.asarray(t, dtype=np.int64)


def argpartition(values: np.ndarray, kth: int) -> np.ndarray:
    v: List[float] = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    n = len(v)
    if kth < 0:
        kth += n
    if not 0 <= kth < n:
        raise ValueError(f"kth {kth} out of bounds for {n} elements")
    t = list(range(n))
    _introselect(v, t, 0, n, kth)
    return np.asarray(t, dtype=np.int64)


def _aquicksort(v: List[float], t: List[int]) -> None:
    num = len(t)
    if num < 2:
        return
    pl, pr = 0, num - 1
    stack = []
    cdepth = _msb(num) * 2
    while True:
        if cdepth < 0:
            _aheapsort(v, t, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if _less(v[t[pm]], v[t[pl]]):
                    t[pm], t[pl] = t[pl], t[pm]
                if _less(v[t[pr]], v[t[pm]]):
                    t[pr], t[pm] = t[pm], t[pr]
                if _less(v[t[pm]], v[t[pl]]):
                    t[pm], t[pl] = t[pl], t[pm]
                vp = v[t[pm]]
                pi, pj = pl, pr - 1
                t[pm], t[pj] = t[pj], t[pm]
                while True:
                    pi += 1
                    while _less(v[t[pi]], vp):
                        pi += 1
                    pj -= 1
                    while _less(vp, v[t[pj]]):
                        pj -= 1
                    if pi >= pj:
                        break
                    t[pi], t[pj] = t[pj], t[pi]
                pk = pr - 1
                t[pi], t[pk] = t[pk], t[pi]
                # the larger side waits on the stack
                cdepth -= 1
                if pi - pl < pr - pi:
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):
                vi = t[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and _less(vp, v[t[pj - 1]]):
                    t[pj] = t[pj - 1]
                    pj -= 1
                t[pj] = vi
        if not stack:
            return
        pl, pr, cdepth = stack.pop()


def _aheapsort(v: List[float], t: List[int], start: int, n: int) -> None:
    base = start - 1  # 1-based heap over t[start:start+n]

    def sift(i: int, tmp: int, n: int) -> None:
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

    for l in range(n >> 1, 0, -1):
        sift(l, t[base + l], n)
    while n > 1:
        tmp = t[base + n]
        t[base + n] = t[base + 1]
        n -= 1
        sift(1, tmp, n)


def _introselect(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    def swap(a: int, b: int) -> None:
        t[off + a], t[off + b] = t[off + b], t[off + a]

    def val(i: int) -> float:
        return v[t[off + i]]

    low, high = 0, num - 1
    if kth - low < 3:
        _dumb_select(v, t, off + low, high - low + 1, kth - low)
        return
    if kth == num - 1:
        maxidx, maxval = low, val(low)
        for k in range(low + 1, num):
            if not _less(val(k), maxval):
                maxidx, maxval = k, val(k)
        swap(kth, maxidx)
        return
    depth_limit = _msb(num) * 2
    while low + 1 < high:
        ll, hh = low + 1, high
        if depth_limit > 0 or hh - ll < 5:
            mid = low + (high - low) // 2
            if _less(val(high), val(mid)):
                swap(high, mid)
            if _less(val(high), val(low)):
                swap(high, low)
            if _less(val(low), val(mid)):
                swap(low, mid)
            swap(mid, low + 1)
        else:
            mid = ll + _median_of_median5(v, t, off + ll, hh - ll)
            swap(mid, low)
            ll -= 1
            hh += 1
        depth_limit -= 1
        pivot = val(low)
        while True:
            ll += 1
            while _less(val(ll), pivot):
                ll += 1
            hh -= 1
            while _less(pivot, val(hh)):
                hh -= 1
            if hh < ll:
                break
            swap(ll, hh)
        swap(low, hh)
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll
    if high == low + 1 and _less(val(high), val(low)):
        swap(high, low)


def _dumb_select(v: List[float], t: List[int], off: int, num: int, kth: int) -> None:
    for i in range(kth + 1):
        minidx, minval = i, v[t[off + i]]
        for k in range(i + 1, num):
            if _less(v[t[off + k]], minval):
                minidx, minval = k, v[t[off + k]]
        t[off + i], t[off + minidx] = t[off + minidx], t[off + i]


def _median5(v: List[float], t: List[int], off: int) -> int:
    def swap(a: int, b: int) -> None:
        t[off + a], t[off + b] = t[off + b], t[off + a]

    def val(i: int) -> float:
        return v[t[off + i]]

    if _less(val(1), val(0)):
        swap(1, 0)
    if _less(val(4), val(3)):
        swap(4, 3)
    if _less(val(3), val(0)):
        swap(3, 0)
    if _less(val(4), val(1)):
        swap(4, 1)
    if _less(val(2), val(1)):
        swap(2, 1)
    if _less(val(3), val(2)):
        return 1 if _less(val(3), val(1)) else 3
    return 2


def _median_of_median5(v: List[float], t: List[int], off: int, num: int) -> int:
    nmed = num // 5
    for i in range(nmed):
        m = _median5(v, t, off + 5 * i)
        t[off + 5 * i + m], t[off + i] = t[off + i], t[off + 5 * i + m]
    if nmed > 2:
        _introselect(v, t, off, nmed, nmed // 2)
    return nmed // 2
