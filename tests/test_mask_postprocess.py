"""Mask paste-back and RLE without the network: Detectron's mask probabilities and
final boxes in, Detectron's RLEs out (byte-identical)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from gnconvert import golden_format
from gnconvert.inference import mask_postprocess, preprocess, roi_levels

from golden_cases import GOLDEN_CASES


@pytest.mark.parametrize("tag,image", GOLDEN_CASES)
def test_golden_probs_paste_to_golden_rles(golden_dir, tag, image):
    ref = golden_format.load(golden_dir, tag, image)
    want = ref.detections
    h, w = want.image_size
    scale = preprocess.compute_scale(h, w, 800, 1333)
    rois = mask_postprocess.mask_rois(torch.from_numpy(want.boxes), scale)
    np.testing.assert_array_equal(rois.numpy(), ref.intermediates["mask_rois"][:, 1:])
    masks = mask_postprocess.paste_masks(ref.intermediates["mask_probs"], want.boxes, (h, w))
    rles = mask_postprocess.encode(masks)
    assert [r["counts"] for r in rles] == [r["counts"] for r in want.masks_rle]
    assert all(r["size"] == [h, w] for r in rles)


def test_expand_truncates_toward_zero():
    box = np.array([[-0.6, 0.0, 2.0, 28.0]], np.float32)
    exp = mask_postprocess.expand_boxes(box, 30 / 28)
    # centre 0.7, half-width 1.3 * 30/28 = 1.392857 -> x1 = -0.69 -> int32 0 (not -1)
    assert exp.astype(np.int32)[0, 0] == 0
    assert exp.astype(np.int32)[0, 2] == 2


def test_paste_full_box_of_ones_fills_box_and_clips():
    probs = np.ones((1, 28, 28), np.float32)
    masks = mask_postprocess.paste_masks(probs, np.array([[-10.0, 5.0, 40.0, 30.0]], np.float32), (20, 30))
    m = masks[0]
    assert m.shape == (20, 30)
    assert m[:5].sum() == 0  # above the box stays empty
    assert m[5:, :].all()  # clipped at the right and bottom image edge


def test_sub_pixel_and_inverted_boxes_do_not_crash():
    probs = np.full((3, 28, 28), 0.9, np.float32)
    b = np.array([[5.0, 5.0, 5.2, 5.1], [7.4, 3.0, 7.0, 9.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    masks = mask_postprocess.paste_masks(probs, b, (12, 12))
    assert masks.shape == (3, 12, 12)
    rles = mask_postprocess.encode(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    dec = mask_util.decode([dict(r, counts=r["counts"].encode()) for r in rles])
    assert (dec.transpose(2, 0, 1) == masks).all()


def test_negative_area_mask_roi_goes_to_finest_level():
    # Detectron asserts "Negative areas founds" here (R-101-FPN-BN on chelsea.png)
    rois = torch.tensor([[10.0, 10.0, 8.0, 50.0], [0.0, 0.0, 223.0, 223.0], [0.0, 0.0, 1000.0, 1000.0]])
    assert roi_levels.assign_levels(rois, 2, 5, 224, 4).tolist() == [2, 4, 5]


def test_class_channel_sigmoid():
    logits = torch.zeros((2, 3, 28, 28))
    logits[0, 2] = 2.0
    logits[1, 1] = -1.0
    p = mask_postprocess.class_probs(logits, torch.tensor([2, 1]))
    np.testing.assert_allclose(p[0].numpy(), 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(p[1].numpy(), 1 / (1 + np.exp(1.0)), rtol=1e-6)


def test_encode_empty():
    assert mask_postprocess.encode(np.zeros((0, 4, 4), np.uint8)) == []
