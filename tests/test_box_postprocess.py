"""Box post-processing without the network: Detectron's own rois, cls_prob and
bbox_pred in, Detectron's final detections out (classes, boxes, scores, order)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_cases import GOLDEN_CASES

from gnconvert.architecture import gn_r50_fpn
from gnconvert.fidelity import golden_format
from gnconvert.inference import box_postprocess, boxes, preprocess


@pytest.mark.parametrize("tag,image", GOLDEN_CASES)
def test_golden_heads_give_golden_detections(golden_dir, tag, image):
    ref = golden_format.load(golden_dir, tag, image)
    z = ref.intermediates
    arch = gn_r50_fpn()  # decoding settings are the same for every golden architecture
    h, w = ref.detections.image_size
    scale = preprocess.compute_scale(h, w, arch.test.scale, arch.test.max_size)
    assert np.float32(scale) == z["im_info"][0, 2]
    pred = box_postprocess.class_boxes(
        torch.from_numpy(z["rois"][:, 1:]), torch.from_numpy(z["bbox_pred"]), scale, h, w,
        list(arch.bbox_reg_weights), arch.bbox_xform_clip,
    )
    t = arch.test
    got_boxes, got_scores, got_classes = box_postprocess.results_with_nms_and_limit(
        torch.from_numpy(z["cls_prob"]), pred, t.score_thresh, t.nms, t.detections_per_im
    )
    want = ref.detections
    np.testing.assert_array_equal(got_classes.numpy(), want.classes)
    np.testing.assert_array_equal(got_scores.numpy(), want.scores)
    # float32 exp may differ from numpy's by an ulp: boxes within 2 ulp of their magnitude
    np.testing.assert_allclose(got_boxes.numpy(), want.boxes, rtol=3e-7, atol=2e-4)


def test_decode_hand_computed():
    # box 0..9 (10 px wide, centre 5), dx=0.1 -> centre 6, dw=log 2 -> 20 px: x1=-4, x2=15
    box = torch.tensor([[0.0, 0.0, 9.0, 19.0]])
    deltas = torch.tensor([[0.1, 0.0, float(np.log(2.0)), 0.0]])
    out = boxes.decode(box, deltas, [1.0, 1.0, 1.0, 1.0], 4.0)
    np.testing.assert_allclose(out.numpy(), [[-4.0, 0.0, 15.0, 19.0]], atol=1e-5)
    # weights divide the deltas; dw is clipped from above only
    out = boxes.decode(box, torch.tensor([[1.0, 0.0, 100.0, -100.0]]), [10.0, 10.0, 5.0, 5.0], float(np.log(1000 / 16)))
    w = 10 * 1000 / 16
    np.testing.assert_allclose(out[0, 0].item(), 6.0 - w / 2, rtol=1e-6)
    np.testing.assert_allclose(out[0, 2].item(), 6.0 + w / 2 - 1, rtol=1e-6)


def test_clip_to_image():
    b = torch.tensor([[-5.0, -1.0, 700.0, 300.0]])
    np.testing.assert_array_equal(boxes.clip_tiled(b, 200, 640).numpy(), [[0, 0, 639, 199]])


def test_detections_per_image_keeps_ties():
    # 3 classes' worth of scores; limit 2 with a tie at the threshold keeps 3
    scores = torch.tensor([[0.0, 0.9, 0.0], [0.0, 0.0, 0.7], [0.0, 0.7, 0.0]])
    far = [[0, 0, 9, 9], [100, 100, 109, 109], [200, 200, 209, 209]]
    bx = torch.tensor([f * 3 for f in far], dtype=torch.float32)
    _, got_scores, got_classes = box_postprocess.results_with_nms_and_limit(scores, bx, 0.05, 0.5, 2)
    assert got_classes.tolist() == [1, 1, 2]  # class-major, RoI order within class
    assert got_scores.tolist() == pytest.approx([0.9, 0.7, 0.7])


def test_no_detections():
    b, s, c = box_postprocess.results_with_nms_and_limit(torch.full((5, 81), 0.01), torch.zeros((5, 324)), 0.05, 0.5, 100)
    assert b.shape == (0, 4) and s.shape == (0,) and c.shape == (0,)
