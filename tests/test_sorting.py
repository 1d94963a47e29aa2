"""numpy 1.23's sort order in torch, against numpy itself.

numpy still runs its classic introsort / introselect for `longdouble`, and widening
float32 to an 80-bit longdouble is exact, so `np.argsort(x.astype(np.longdouble))`
is numpy 1.23's float32 answer (numpy >= 1.25 sorts float32 with SIMD code that
orders ties differently).  Heavily tied inputs make the order depend on every
detail of the algorithms.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy_killers import introselect_killer, quicksort_killer

from gnconvert.inference import sorting

_heapsort, _select_loop = sorting.heapsort, sorting.select_loop

if np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant:
    pytest.skip("numpy's longdouble is a double here: no classic-sort reference", allow_module_level=True)

LD = np.longdouble


def ref_argsort(x):
    return np.argsort(np.asarray(x, LD))


def ref_top_k(scores, k):
    neg = -np.asarray(scores, np.float32)
    if k <= 0 or k >= neg.shape[0]:
        return ref_argsort(neg)
    inds = np.argpartition(neg.astype(LD), k)[:k]
    return inds[ref_argsort(neg[inds])]


def tied(rng, n, levels):
    return (rng.randint(0, levels, n) / levels).astype(np.float32)


@pytest.mark.parametrize("levels", [2, 7, 1000, 1 << 20])
def test_argsort_and_argpartition_equal_numpy(levels):
    rng = np.random.RandomState(levels)
    for n in (1, 2, 3, 16, 17, 300, 4000, 45600):
        x = tied(rng, n, levels)
        t = torch.from_numpy(x)
        assert np.array_equal(sorting.argsort(t).numpy(), ref_argsort(x)), n
        for kth in sorted({0, 1, 2, 3, n // 3, n // 2, n - 2, n - 1, 1000}):
            if 0 <= kth < n:
                assert np.array_equal(sorting.argpartition(t, kth).numpy(), np.argpartition(x.astype(LD), kth)), (n, kth)


def test_top_k_with_the_pipelines_sizes():
    """A P2 level's 182400 anchors, many saturated at exactly 1.0, top 1000."""
    rng = np.random.RandomState(0)
    x = np.where(rng.rand(182400) < 0.01, 1.0, rng.rand(182400)).astype(np.float32)
    x[rng.randint(0, 182400, 5000)] = np.float32(0.99999994)
    assert np.array_equal(sorting.top_k_descending(torch.from_numpy(x), 1000).numpy(), ref_top_k(x, 1000))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, -0.0, float("nan"), float("inf")]), min_size=1,
                       max_size=400), k=st.integers(-1, 420))
def test_top_k_and_nms_order_on_ties_nans_and_zeros(values, k):
    x = np.array(values, np.float32)
    t = torch.from_numpy(x)
    assert np.array_equal(sorting.top_k_descending(t, k).numpy(), ref_top_k(x, k))
    assert np.array_equal(sorting.nms_order(t).numpy(), ref_argsort(x)[::-1])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 90), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_segments_sort_like_separate_arrays(lengths, seed):
    rng = np.random.RandomState(seed)
    x = tied(rng, sum(lengths), 3)
    lens = torch.tensor(lengths)
    got = sorting.nms_order_segments(torch.from_numpy(x), lens).numpy()
    start = 0
    for n in lengths:
        want = start + ref_argsort(x[start: start + n])[::-1]
        assert np.array_equal(got[start: start + n], want)
        start += n


@pytest.mark.parametrize("n", [200, 3000])
def test_fallbacks_where_numpy_takes_them(monkeypatch, n):
    """Adversarial inputs (tests/numpy_killers.py) drive introsort into heapsort and
    introselect into median-of-medians pivots; the answers still equal numpy's."""
    taken = []
    monkeypatch.setattr(sorting, "heapsort", lambda *a: taken.append("heap") or _heapsort(*a))
    monkeypatch.setattr(sorting, "select_loop", lambda *a: taken.append("select") or _select_loop(*a))
    x = quicksort_killer(n)
    assert np.array_equal(sorting.argsort(torch.from_numpy(x)).numpy(), ref_argsort(x))
    x = introselect_killer(n, n // 3)
    assert np.array_equal(sorting.argpartition(torch.from_numpy(x), n // 3).numpy(),
                          np.argpartition(x.astype(LD), n // 3))
    assert "heap" in taken and "select" in taken


def test_small_ties_keep_index_order():
    # insertion sort below 17 elements is stable; cython_nms visits the reversed order
    assert sorting.argsort(torch.ones(10)).tolist() == list(range(10))
    assert sorting.nms_order(torch.ones(4)).tolist() == [3, 2, 1, 0]


def test_scripted_sorts_are_the_same_code():
    rng = np.random.RandomState(3)
    x = torch.from_numpy(tied(rng, 5000, 5))
    top_k = torch.jit.script(sorting.top_k_descending)
    order = torch.jit.script(sorting.nms_order)
    assert torch.equal(top_k(x, 1000), sorting.top_k_descending(x, 1000))
    assert torch.equal(order(x), sorting.nms_order(x))


def test_exported_depth_limit_is_numpys_floor_log2():
    """The exported sorts' depth limit (numpy's npy_get_msb): floor(log2(m)) in integers, checked
    against Python's own bit_length at every power of two and its neighbours up to 2**63 - 1."""
    from gnconvert.inference.exportable.sorting import msb

    ms = sorted({v for p in range(63) for v in (2 ** p - 1, 2 ** p, 2 ** p + 1) if 1 <= v < 2 ** 63} | {2 ** 63 - 1})
    got = msb(torch.tensor(ms, dtype=torch.int64))
    assert got.tolist() == [m.bit_length() - 1 for m in ms]
