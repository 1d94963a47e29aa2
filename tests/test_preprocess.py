"""The input blob against Detectron's own (golden im_info, data shape, 32x32 crop)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gnconvert.architecture import gn_r50_fpn
from gnconvert.errors import UsageError
from gnconvert.inference import preprocess

IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]


def _blob(image, arch=None):
    arch = arch or gn_r50_fpn()
    data, im_info, scale = preprocess.input_blob(
        torch.from_numpy(preprocess.load_image(image)), torch.tensor(arch.pixel_means, dtype=torch.float64),
        arch.test.scale, arch.test.max_size, arch.coarsest_stride)
    return SimpleNamespace(data=data, im_info=im_info.reshape(1, 3), scale=scale)


@pytest.mark.parametrize("image", IMAGES)
def test_blob_matches_detectron(golden_dir, image):
    ref = np.load(golden_dir / "detectron" / f"R-50-FPN-GN_seed1__{image.split('.')[0]}.npz")
    blob = _blob(str(golden_dir / "images" / image))
    assert tuple(blob.data.shape) == tuple(ref["data_shape"])
    np.testing.assert_array_equal(blob.im_info.numpy(), ref["im_info"])
    # the golden crop is the blob's top-left 32x32 corner
    np.testing.assert_array_equal(blob.data[0, :, :32, :32].numpy(), ref["data_crop"])


def test_max_size_rule_and_upscaling():
    # 180x1500: 800/180 would make the long side 6667 > 1333, so the long side sets the scale
    assert preprocess.compute_scale(180, 1500, 800, 1333) == 1333 / 1500
    # 47x61: short side to 800 (a 17x upscale), long side 1038 stays under 1333
    assert preprocess.compute_scale(47, 61, 800, 1333) == 800 / 47
    # np.round is half-to-even: 1333.5 rounds to 1334 > 1333 -> capped
    assert preprocess.compute_scale(800, 1333.5, 800, 1333) == 1333 / 1333.5


def test_padding_is_zero_after_mean_subtraction():
    image = np.full((10, 13, 3), 200, np.uint8)
    blob = _blob(image)
    h, w = blob.data.shape[2:]
    assert h % 32 == 0 and w % 32 == 0
    s = blob.scale
    rh, rw = round(10 * s), round(13 * s)
    assert (blob.data[0, :, rh:, :] == 0).all() and (blob.data[0, :, :, rw:] == 0).all()
    # interior: 200 minus the BGR mean, rounded to float32 (a constant image resizes to itself)
    expected = (200.0 - np.array(gn_r50_fpn().pixel_means)).astype(np.float32)
    np.testing.assert_array_equal(blob.data[0, :, 5, 5].numpy(), expected)


def test_one_pixel_image():
    blob = _blob(np.zeros((1, 1, 3), np.uint8))
    assert blob.scale == 800.0
    assert tuple(blob.data.shape) == (1, 3, 800, 800)
    assert blob.im_info[0].tolist() == [800.0, 800.0, 800.0]


def test_gray_and_bgra_become_bgr():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    bgr = preprocess.load_image(gray)
    assert bgr.shape == (3, 4, 3) and (bgr == gray[:, :, None]).all()
    bgra = np.dstack([np.full((3, 4), c, np.uint8) for c in (1, 2, 3, 255)])
    assert (preprocess.load_image(bgra) == np.array([1, 2, 3], np.uint8)).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8), [1, 2, 3]],
)
def test_bad_images_are_rejected_clearly(bad):
    with pytest.raises(UsageError):
        preprocess.load_image(bad)


def test_missing_and_undecodable_paths(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        preprocess.load_image(tmp_path / "nope.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(UsageError, match="could not be decoded"):
        preprocess.load_image(junk)
