"""Anchors, numpy-1.23 sort decisions, per-level proposals and level assignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gnconvert.inference import anchors, proposals, roi_levels

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


def test_chosen_cells_get_the_anchors_of_detectrons_grid():
    """level_candidates picks anchors for its top-k cells by flat index (y * W + x) * A + a;
    Detectron enumerates the whole grid (shifts over y, x, then the A cell anchors)."""
    cell = anchors.cell_anchors(4, 32, (0.5, 1.0, 2.0))
    height, width, num = 2, 3, 3
    sx, sy = np.meshgrid(np.arange(width) * 4.0, np.arange(height) * 4.0)
    shifts = np.stack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()), axis=1)
    grid = (cell[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)
    # every cell scores differently; zero deltas decode an anchor to itself
    logits = torch.arange(height * width * num, dtype=torch.float32).reshape(height, width, num).permute(2, 0, 1)
    logits = (logits - 9.0) / 4.0
    deltas = torch.zeros((4 * num, height, width))
    im_info = torch.tensor([1000.0, 1000.0, 1.0])
    boxes, _ = proposals.level_candidates(logits.contiguous(), deltas, torch.from_numpy(cell), 4, im_info,
                                          (1000, 1000), 1000, 0.0, 4.135)
    # best first = highest flat index first; boxes are clipped at 0
    np.testing.assert_array_equal(boxes.numpy(), np.clip(grid[::-1], 0, None))


def _level(probs, deltas, im_info, stride, size, ratios):
    cell = torch.from_numpy(anchors.cell_anchors(stride, size, ratios))
    logits = torch.log(probs / (1 - probs))
    info = torch.tensor(im_info)
    boxes, scores = proposals.level_candidates(logits, deltas, cell, stride, info, (int(im_info[0]), int(im_info[1])),
                                               1000, 0.0, 4.135)
    return proposals.suppress_per_level([boxes], [scores], 0.7, 1000)


def test_level_proposals_hand_case():
    # one anchor per cell on a 1x2 map, stride 16: cell 1 scores higher
    (boxes,), (scores,) = _level(torch.tensor([[[0.2, 0.8]]]), torch.zeros((4, 1, 2)), [32.0, 32.0, 1.0], 16, 16,
                                 (1.0,))
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
    (boxes,), _ = _level(probs, deltas, [8.0, 8.0, 2.0], 16, 16, (1.0, 1.0))
    np.testing.assert_array_equal(boxes.numpy(), [[0, 0, 7, 7]])


def test_post_nms_top_n_is_per_level():
    """Three levels of disjoint boxes: each keeps its own best two, best first."""
    level_boxes = [torch.tensor([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(n)]) for n in (3, 1, 4)]
    level_scores = [torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.3]), torch.tensor([0.4, 0.3, 0.2, 0.1])]
    boxes, scores = proposals.suppress_per_level(level_boxes, level_scores, 0.7, 2)
    # kept indices come back ascending (cython_nms), then the first two are kept
    assert [s.tolist() for s in scores] == [pytest.approx([0.1, 0.9]), pytest.approx([0.3]), pytest.approx([0.4, 0.3])]
    assert [b.shape[0] for b in boxes] == [2, 1, 2]


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
