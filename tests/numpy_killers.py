"""Inputs that drive numpy's classic sorts into their fallbacks (McIlroy's "antiqsort").

The adversary answers a sort's comparisons lazily: values start as "gas" (all equal
and larger than any decided value) and are frozen to increasing values only when a
comparison needs it, always freezing the element the sort is likely using as its
pivot.  Run against a step-by-step port of numpy's median-of-3 quicksort or
introselect, it yields inputs on which those partitions peel off almost nothing, so
introsort switches to heapsort and introselect to median-of-medians pivots.  The
ports below only steer the adversary; whether `gnconvert.inference.sorting` then
matches numpy is judged against numpy itself.
"""
from __future__ import annotations

from typing import Callable, List

import numpy as np


class _Adversary:
    def __init__(self, n: int):
        self.gas = n
        self.val = [n] * n
        self.solid = 0
        self.candidate = 0

    def less(self, x: int, y: int) -> bool:
        val = self.val
        if val[x] == self.gas and val[y] == self.gas:
            self._freeze(x if x == self.candidate else y)
        if val[x] == self.gas:
            self.candidate = x
        elif val[y] == self.gas:
            self.candidate = y
        return val[x] < val[y]

    def _freeze(self, x: int) -> None:
        self.val[x] = self.solid
        self.solid += 1


def _quicksort(less: Callable[[int, int], bool], t: List[int]) -> None:
    """numpy's median-of-3 partitioning (no heapsort: the adversary wants it to degrade)."""
    stack = [(0, len(t) - 1)]
    while stack:
        pl, pr = stack.pop()
        while pr - pl > 15:
            pm = pl + ((pr - pl) >> 1)
            if less(t[pm], t[pl]):
                t[pm], t[pl] = t[pl], t[pm]
            if less(t[pr], t[pm]):
                t[pr], t[pm] = t[pm], t[pr]
            if less(t[pm], t[pl]):
                t[pm], t[pl] = t[pl], t[pm]
            vp = t[pm]
            pi, pj = pl, pr - 1
            t[pm], t[pj] = t[pj], t[pm]
            while True:
                pi += 1
                while less(t[pi], vp):
                    pi += 1
                pj -= 1
                while less(vp, t[pj]):
                    pj -= 1
                if pi >= pj:
                    break
                t[pi], t[pj] = t[pj], t[pi]
            t[pi], t[pr - 1] = t[pr - 1], t[pi]
            if pi - pl < pr - pi:
                stack.append((pi + 1, pr))
                pr = pi - 1
            else:
                stack.append((pl, pi - 1))
                pl = pi + 1


def _select(less: Callable[[int, int], bool], t: List[int], kth: int) -> None:
    """numpy's introselect narrowing loop with median-of-3 pivots only."""
    low, high = 0, len(t) - 1
    while low + 1 < high:
        mid = low + (high - low) // 2
        if less(t[high], t[mid]):
            t[high], t[mid] = t[mid], t[high]
        if less(t[high], t[low]):
            t[high], t[low] = t[low], t[high]
        if less(t[low], t[mid]):
            t[low], t[mid] = t[mid], t[low]
        t[mid], t[low + 1] = t[low + 1], t[mid]
        ll, hh = low + 1, high
        pivot = t[low]
        while True:
            ll += 1
            while less(t[ll], pivot):
                ll += 1
            hh -= 1
            while less(pivot, t[hh]):
                hh -= 1
            if hh < ll:
                break
            t[ll], t[hh] = t[hh], t[ll]
        t[low], t[hh] = t[hh], t[low]
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll


def quicksort_killer(n: int) -> np.ndarray:
    adv = _Adversary(n)
    _quicksort(adv.less, list(range(n)))
    return np.asarray(adv.val, np.float32)


def introselect_killer(n: int, kth: int) -> np.ndarray:
    adv = _Adversary(n)
    _select(adv.less, list(range(n)), kth)
    return np.asarray(adv.val, np.float32)
