"""Mask paste-back and RLE without the network: Detectron's mask probabilities and
final boxes in, Detectron's RLEs out (byte-identical)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_cases import GOLDEN_CASES
from pycocotools import mask as mask_util

from gnconvert.fidelity import golden_format
from gnconvert.inference import mask_postprocess, preprocess, rle, roi_levels


@pytest.mark.parametrize("tag,image", GOLDEN_CASES)
def test_golden_probs_paste_to_golden_rles(golden_dir, tag, image):
    ref = golden_format.load(golden_dir, tag, image)
    want = ref.detections
    h, w = want.image_size
    scale = preprocess.compute_scale(h, w, 800, 1333)
    rois = mask_postprocess.mask_rois(torch.from_numpy(want.boxes), scale)
    np.testing.assert_array_equal(rois.numpy(), ref.intermediates["mask_rois"][:, 1:])
    crops, starts = mask_postprocess.paste(torch.from_numpy(ref.intermediates["mask_probs"]),
                                           torch.from_numpy(want.boxes), h, w, 0.5)
    rles = rle.encode([c.numpy() for c in crops], starts.numpy(), (h, w))
    assert [r["counts"] for r in rles] == [r["counts"] for r in want.masks_rle]
    assert all(r["size"] == [h, w] for r in rles)


def _pasted(probs, boxes, height, width):
    crops, starts = mask_postprocess.paste(torch.from_numpy(probs), torch.from_numpy(boxes), height, width, 0.5)
    return crops, starts, mask_postprocess.dense(crops, starts, height, width).numpy()


def _opencv_paste(probs, box, height, width):
    """Detectron's segm_results for one mask, with OpenCV and numpy (the reference)."""
    import cv2

    m = probs.shape[-1]
    ref = mask_postprocess.reference_boxes(torch.from_numpy(box[None]), m)[0].tolist()
    padded = np.zeros((m + 2, m + 2), np.float32)
    padded[1:-1, 1:-1] = probs
    w, h = max(ref[2] - ref[0] + 1, 1), max(ref[3] - ref[1] + 1, 1)
    mask = (cv2.resize(padded, (w, h)) > 0.5).astype(np.uint8)
    out = np.zeros((height, width), np.uint8)
    x0, x1 = max(ref[0], 0), min(ref[2] + 1, width)
    y0, y1 = max(ref[1], 0), min(ref[3] + 1, height)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = mask[y0 - ref[1]:y1 - ref[1], x0 - ref[0]:x1 - ref[0]]
    return out


def test_batched_paste_equals_opencv_one_by_one():
    """Boxes of very different sizes in one call, chunked by a small budget too."""
    rng = np.random.RandomState(0)
    n, height, width = 60, 90, 140
    probs = rng.rand(n, 28, 28).astype(np.float32)
    xy = rng.uniform(-20, 130, (n, 2))
    boxes = np.hstack([xy, xy + rng.uniform(0, 80, (n, 2))]).astype(np.float32)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - 1)
    _, _, dense = _pasted(probs, boxes, height, width)
    for i in range(n):
        assert np.array_equal(dense[i], _opencv_paste(probs[i], boxes[i], height, width)), i
    crops, starts = mask_postprocess.paste(torch.from_numpy(probs), torch.from_numpy(boxes), height, width, 0.5,
                                           budget=1)
    assert np.array_equal(mask_postprocess.dense(crops, starts, height, width).numpy(), dense)


def test_rle_from_crops_equals_pycocotools_encode():
    """Crops anywhere in the image, full-height ones included (runs joining across columns)."""
    rng = np.random.RandomState(1)
    for _ in range(500):
        height, width = rng.randint(1, 25, 2)
        h, w = rng.randint(0, height + 1), rng.randint(0, width + 1)
        y, x = rng.randint(0, height - h + 1), rng.randint(0, width - w + 1)
        crop = (rng.rand(h, w) < rng.choice([0.0, 0.3, 0.9, 1.0])).astype(np.uint8)
        full = np.zeros((height, width), np.uint8)
        full[y:y + h, x:x + w] = crop
        want = mask_util.encode(np.asfortranarray(full[:, :, None]))[0]
        got = rle.encode([crop], np.array([[y, x]]), (height, width))[0]
        assert got == dict(want, counts=want["counts"].decode("ascii"))


def test_expand_truncates_toward_zero():
    box = torch.tensor([[-0.6, 0.0, 2.0, 28.0]])
    ref = mask_postprocess.reference_boxes(box, 28)
    # centre 0.7, half-width 1.3 * 30/28 = 1.392857 -> x1 = -0.69 -> int32 0 (not -1)
    assert ref[0, 0] == 0
    assert ref[0, 2] == 2


def test_paste_full_box_of_ones_fills_box_and_clips():
    probs = np.ones((1, 28, 28), np.float32)
    _, _, masks = _pasted(probs, np.array([[-10.0, 5.0, 40.0, 30.0]], np.float32), 20, 30)
    m = masks[0]
    assert m.shape == (20, 30)
    assert m[:5].sum() == 0  # above the box stays empty
    assert m[5:, :].all()  # clipped at the right and bottom image edge


def test_sub_pixel_and_inverted_boxes_do_not_crash():
    probs = np.full((3, 28, 28), 0.9, np.float32)
    b = np.array([[5.0, 5.0, 5.2, 5.1], [7.4, 3.0, 7.0, 9.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    crops, starts, masks = _pasted(probs, b, 12, 12)
    assert masks.shape == (3, 12, 12)
    rles = rle.encode([c.numpy() for c in crops], starts.numpy(), (12, 12))
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
    crops, starts = mask_postprocess.paste(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), 4, 4, 0.5)
    assert crops == [] and rle.encode(crops, starts.numpy(), (4, 4)) == []
    assert mask_postprocess.dense(crops, starts, 4, 4).shape == (0, 4, 4)
