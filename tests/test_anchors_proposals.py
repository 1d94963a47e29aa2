"""Anchors, numpy-1.23 sort decisions, per-level proposals and level assignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gnconvert.inference import anchors, classic_sort, proposals, roi_levels, sorting

# Detectron's generate_anchors for FPN levels 2..6 (size 32 * 2**(l-2), ratios .5, 1, 2),
# worked by hand from its formulas: ws = round(sqrt(s*s / r)), hs = round(ws * r), scaled.
EXPECTED_ANCHORS = {
    2: [(-22, -10, 25, 13), (-14, -14, 17, 17), (-10, -22, 13, 25)],
    3: [(-40, -20, 47, 27), (-28, -28, 35, 35), (-20, -44, 27, 51)],
    4: [(-84, -40, 99, 55), (-56, -56, 71, 71), (-36, -80, 51, 95)],
    5: [(-164, -72, 195, 103), (-112, -112, 143, 143), (-76, -168, 107, 199)],
    6: [(-332, -152, 395, 215), (-224, -224, 287, 287), (-148, -328, 211, 391)],
}


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6])
def test_cell_anchors(level):
    got = anchors.cell_anchors(2**level, 32 * 2 ** (level - 2), (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(got, np.array(EXPECTED_ANCHORS[level], float))


def test_grid_anchor_order_is_y_x_a():
    g = anchors.grid_anchors(2, 3, 4, 32, (0.5, 1.0, 2.0))
    assert g.shape == (2 * 3 * 3, 4)
    # flat index (y * W + x) * A + a: y=1, x=2, a=1 -> 16; shift (8, 4)
    np.testing.assert_array_equal(g[16].numpy(), np.array([-14 + 8, -14 + 4, 17 + 8, 17 + 4], np.float32))


def test_small_argsort_ties_are_stable():
    # numpy's introsort uses insertion sort below 16 items: ties keep index order
    assert sorting.argsort(np.ones(10, np.float32)).tolist() == list(range(10))
    assert sorting.nms_order(np.ones(4, np.float32)).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("seed", range(6))
def test_sorts_equal_the_classic_numpy_algorithms(seed):
    # many exact ties (saturated probabilities) in arrays of the sizes the pipeline sorts
    rng = np.random.default_rng(seed)
    n = [40, 700, 1000, 2500, 5000, 20000][seed]
    x = rng.choice(np.float32([-1.0, -0.99999994, -0.5, -0.25]), n)
    np.testing.assert_array_equal(sorting.argsort(x), classic_sort.argsort(x))
    for kth in (1, 7, n // 3, n - 1):
        np.testing.assert_array_equal(sorting.argpartition(x, kth), classic_sort.argpartition(x, kth))


def test_classic_sorts_are_valid_sorts():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 30, 3000).astype(np.float32)
    order = classic_sort.argsort(x)
    assert sorted(order.tolist()) == list(range(3000)) and (np.diff(x[order]) >= 0).all()
    part = classic_sort.argpartition(x, 1000)
    assert x[part[:1000]].max() <= x[part[1000]] <= x[part[1001:]].min()


def test_top_k_descending_with_ties_at_the_cut():
    scores = np.array([0.5, 1.0, 1.0, 0.2, 1.0, 0.9], np.float32)
    top = sorting.top_k_descending(scores, 3)
    assert set(top.tolist()) == {1, 2, 4}
    assert sorting.top_k_descending(scores, 0).tolist()[:3] == sorted(top.tolist())


def test_level_proposals_hand_case():
    # one anchor per cell on a 1x2 map, stride 16: cell 1 scores higher
    probs = torch.tensor([[[0.2, 0.8]]])
    deltas = torch.zeros((4, 1, 2))
    im_info = torch.tensor([[32.0, 32.0, 1.0]])
    boxes, scores = proposals.level_proposals(
        probs, deltas, im_info, stride=16, anchor_size=16, aspect_ratios=(1.0,),
        pre_nms_top_n=1000, post_nms_top_n=1000, nms_thresh=0.7, min_size=0, bbox_xform_clip=4.135,
    )
    # anchors (0,0,15,15) and (16,0,31,15); no overlap, both kept, best first
    assert scores.tolist() == pytest.approx([0.8, 0.2])
    np.testing.assert_array_equal(boxes.numpy(), [[16, 0, 31, 15], [0, 0, 15, 15]])


def test_level_proposals_clip_to_padded_size_and_drop_thin_boxes():
    probs = torch.tensor([[[0.9]], [[0.5]]])  # A=2 anchors, 1x1 map
    deltas = torch.zeros((8, 1, 1))
    # anchor 1: centre moved to x=4 and width shrunk to ~0, so x2 = x1 - 1 + w:
    # under one original pixel ((x2 - x1) / scale + 1 = 0.5) -> dropped
    deltas[4, 0, 0] = -0.25
    deltas[6, 0, 0] = -10.0
    im_info = torch.tensor([[8.0, 8.0, 2.0]])
    boxes, scores = proposals.level_proposals(
        probs, deltas, im_info, stride=16, anchor_size=16, aspect_ratios=(1.0, 1.0),
        pre_nms_top_n=1000, post_nms_top_n=1000, nms_thresh=0.7, min_size=0, bbox_xform_clip=4.135,
    )
    np.testing.assert_array_equal(boxes.numpy(), [[0, 0, 7, 7]])


def test_collect_takes_best_over_levels():
    b = [torch.tensor([[0.0, 0, 1, 1], [1.0, 1, 2, 2]]), torch.tensor([[5.0, 5, 6, 6]])]
    s = [torch.tensor([0.3, 0.1]), torch.tensor([0.2])]
    out = proposals.collect(b, s, 2)
    np.testing.assert_array_equal(out.numpy(), [[0, 0, 1, 1], [5, 5, 6, 6]])


def test_level_assignment_boundaries():
    # sqrt(area) 224 -> level 4, 112 -> 3, 448 -> 5; tiny -> 2; huge -> 5
    sides = [224, 112, 448, 10, 5000]
    b = torch.tensor([[0.0, 0.0, s - 1.0, s - 1.0] for s in sides])
    assert roi_levels.assign_levels(b, 2, 5, 224, 4).tolist() == [4, 3, 5, 2, 5]


def test_multilevel_roi_align_restores_order():
    feats = [torch.full((1, 1, 64, 64), float(lvl)) for lvl in range(2, 6)]
    b = torch.tensor([[0.0, 0, 500, 500], [0.0, 0, 10, 10], [0.0, 0, 200, 200]])
    lv = roi_levels.assign_levels(b, 2, 5, 224, 4)
    out = roi_levels.multilevel_roi_align(feats, b, lv, 2, 7, 2)
    assert out[:, 0, 0, 0].tolist() == lv.float().tolist()
