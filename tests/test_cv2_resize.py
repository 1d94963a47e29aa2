"""`cv2.resize(INTER_LINEAR)` in torch (`inference.cv2_resize`) against OpenCV itself:
the input resize by a factor and the mask paste's resize to a size, bit for bit."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from gnconvert.inference.cv2_resize import resize_by_factor, resize_each_to, round_half_even
from gnconvert.inference.preprocess import compute_scale

GOLDEN_IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]

def test_round_half_even():
    assert [round_half_even(x) for x in (0.5, 1.5, 2.5, -0.5, 2.4999, 7.5, 1202.5)] == [0, 2, 2, 0, 2, 8, 1202]


@pytest.mark.parametrize("image", GOLDEN_IMAGES)
def test_resize_by_factor_matches_opencv_on_golden_images(golden_dir, image):
    """Whole resized golden images, bit for bit, against cv2.resize(fx=s) itself."""
    bgr = cv2.imread(str(golden_dir / "images" / image))
    im = (bgr.astype(np.float64) - np.array([102.9801, 115.9465, 122.7717])).astype(np.float32)
    s = compute_scale(im.shape[0], im.shape[1], 800, 1333)
    expected = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    ours = resize_by_factor(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))), s).numpy()
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize("height,width", [(480, 640), (640, 480), (600, 600), (375, 500), (427, 640), (47, 61),
                                          (180, 1500), (1600, 1000), (1600, 2000), (31, 45)])
def test_resize_by_factor_matches_opencv_on_common_shapes(height, width):
    """COCO-like shapes at Detectron's scale (both of OpenCV/IPP's coordinate rules, up and down)."""
    im = (np.random.RandomState(height * width).rand(height, width, 3) * 255 - 120).astype(np.float32)
    s = compute_scale(height, width, 800, 1333)
    expected = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    ours = resize_by_factor(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))), s).numpy()
    assert np.array_equal(ours, expected)


def test_resize_to_matches_opencv_for_mask_paste_sizes():
    """The paste's cv2.resize(30x30 probabilities, (w, h)), every size from 1 to 120, and some larger."""
    rng = np.random.RandomState(0)
    probs = rng.rand(30, 30).astype(np.float32)
    sizes = [(w, h) for w in range(1, 121, 7) for h in range(1, 121, 5)] + [(15, 15), (30, 30), (60, 60), (517, 311)]
    ws, hs = torch.tensor([w for w, _ in sizes]), torch.tensor([h for _, h in sizes])
    out = resize_each_to(torch.from_numpy(probs)[None].expand(len(sizes), 30, 30), ws, hs, int(ws.max()), int(hs.max()))
    for i, (w, h) in enumerate(sizes):
        assert np.array_equal(out[i, :h, :w].numpy(), cv2.resize(probs, (w, h))), (w, h)
