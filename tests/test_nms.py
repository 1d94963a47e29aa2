"""Detectron's NMS (utils/cython_nms.pyx) against a line-by-line transcription of it.

The transcription below visits boxes in numpy's `argsort()[::-1]` order (numpy's
classic sort, via longdouble: see test_sorting.py), computes each IoU with
float32 scalars in cython's order, and suppresses at IoU >= a float32 threshold.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnconvert.inference import nms

F = np.float32


def cython_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    x1, y1, x2, y2, scores = (dets[:, i].astype(F) for i in range(5))
    areas = (x2 - x1 + F(1)) * (y2 - y1 + F(1))
    order = np.argsort(scores.astype(np.longdouble))[::-1]
    suppressed = np.zeros(len(dets), bool)
    thresh = F(thresh)
    for _i in range(len(dets)):
        i = order[_i]
        if suppressed[i]:
            continue
        for _j in range(_i + 1, len(dets)):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1, yy1 = max(x1[i], x1[j]), max(y1[i], y1[j])
            xx2, yy2 = min(x2[i], x2[j]), min(y2[i], y2[j])
            w, h = max(F(0.0), xx2 - xx1 + F(1)), max(F(0.0), yy2 - yy1 + F(1))
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = True
    return np.where(~suppressed)[0]


def _boxes(rng, n, spread=30, size=20, dup=3):
    xy = rng.randint(0, spread, (n, 2)).astype(F) + rng.choice(F([0, 0.25, 0.5]), (n, 2))
    wh = rng.randint(0, size, (n, 2)).astype(F)
    b = np.hstack([xy, xy + wh])
    if n > dup:
        b[rng.randint(0, n, dup)] = b[0]  # exact duplicates
    return b


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 150), levels=st.sampled_from([1, 2, 4, 1000]), thresh=st.sampled_from([0.3, 0.5, 0.7]),
       seed=st.integers(0, 10_000))
def test_keep_list_equals_cython_nms(n, levels, thresh, seed):
    rng = np.random.RandomState(seed)
    b = _boxes(rng, n)
    s = (rng.randint(0, levels, n) / levels).astype(F)  # many exact ties
    got = nms.nms(torch.from_numpy(b), torch.from_numpy(s), float(F(thresh))).numpy()
    assert np.array_equal(got, cython_nms(np.hstack([b, s[:, None]]), thresh))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=10), seed=st.integers(0, 10_000))
def test_groups_are_independent_and_chunking_changes_nothing(lengths, seed):
    rng = np.random.RandomState(seed)
    n = sum(lengths)
    b = _boxes(rng, n, spread=15)
    s = (rng.randint(0, 3, n) / 3).astype(F)
    want, start = [], 0
    for m in lengths:
        want += (start + cython_nms(np.hstack([b[start:start + m], s[start:start + m, None]]), 0.5)).tolist()
        start += m
    tb, ts, tl = torch.from_numpy(b), torch.from_numpy(s), torch.tensor(lengths)
    thr = float(F(0.5))
    assert nms.batched_nms(tb, ts, tl, thr).tolist() == want
    assert nms.batched_nms(tb, ts, tl, thr, budget=1).tolist() == want  # one group per chunk


def test_plus_one_sides_and_greater_equal():
    # two 10x10 boxes overlapping 5 columns ("+1": 5*10 / (100+100-50) = 1/3)
    b = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    s = torch.tensor([0.9, 0.8])
    assert nms.nms(b, s, float(F(1.0 / 3.0))).tolist() == [0]  # IoU == thresh suppresses
    assert nms.nms(b, s, float(F(0.34))).tolist() == [0, 1]


def test_ascending_indices_and_numpys_tie_order():
    b = torch.tensor([[0.0, 0.0, 9.0, 9.0], [50.0, 50, 59, 59], [0.0, 0.0, 9.0, 9.0]])
    s = torch.tensor([0.5, 0.9, 0.5])
    # tie between 0 and 2: numpy's argsort of <= 16 items is an insertion sort
    # (stable), reversed -> index 2 is visited first and survives
    assert nms.nms(b, s, 0.5).tolist() == [1, 2]


def test_a_chain_needs_many_rounds_and_still_matches():
    """Each box suppresses only the next: greedy keeps every other one."""
    n = 200
    x = np.arange(n, dtype=F) * 3
    b = np.stack([x, np.zeros(n, F), x + 9, np.full(n, 9, F)], 1)  # IoU(i, i+1) = 7/13 >= 0.5, (i, i+2) = 4/16
    s = np.linspace(1, 0.5, n).astype(F)
    got = nms.nms(torch.from_numpy(b), torch.from_numpy(s), 0.5)
    assert got.tolist() == list(range(0, n, 2)) == cython_nms(np.hstack([b, s[:, None]]), 0.5).tolist()


def test_scripted_is_the_same_code():
    rng = np.random.RandomState(0)
    b, s = torch.from_numpy(_boxes(rng, 300)), torch.from_numpy((rng.randint(0, 4, 300) / 4).astype(F))
    scripted = torch.jit.script(nms.batched_nms)
    lengths = torch.tensor([100, 0, 150, 50])
    assert torch.equal(scripted(b, s, lengths, 0.5, 1 << 24), nms.batched_nms(b, s, lengths, 0.5))


def test_empty():
    assert nms.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).shape == (0,)
