"""The network input exactly as Detectron builds it (utils/blob.py).

uint8 BGR -> float32 -> minus PIXEL_MEANS (computed in float64, as numpy did)
-> OpenCV bilinear resize by the factor s itself -> zero pad bottom/right to a
multiple of the coarsest FPN stride.  OpenCV is used for the resize because it
samples with `s`, not with output/input size, and rounds the output size its own
way; torch's interpolate would differ in the last pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Tuple, Union

import cv2
import numpy as np
import torch

from ..errors import UsageError

ImageInput = Union[np.ndarray, str, os.PathLike]


@dataclass
class ImageBlob:
    data: torch.Tensor  # (1, 3, H_pad, W_pad) float32
    im_info: torch.Tensor  # (1, 3) float32: padded height, padded width, scale
    scale: float  # the exact float64 factor Detectron keeps in Python
    image_size: Tuple[int, int]  # original (height, width)


def load_image(image: ImageInput) -> np.ndarray:
    """A BGR uint8 HxWx3 array from a path or an array, as cv2.imread gives it.

    Grayscale (HxW, HxWx1) is replicated to three channels and BGRA loses its
    alpha, which is what `cv2.imread(path)` does with such files.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise UsageError(f"image {path!r} does not exist; pass an existing image file")
        im = cv2.imread(path, cv2.IMREAD_COLOR)
        if im is None:
            raise UsageError(f"image {path!r} could not be decoded by OpenCV; pass a JPEG or PNG file")
        return im
    if not isinstance(image, np.ndarray):
        raise UsageError(
            f"image of type {type(image).__name__} is not supported; pass a BGR uint8 numpy array or a path"
        )
    if image.dtype != np.uint8:
        raise UsageError(f"image dtype {image.dtype} is not supported; pass BGR uint8 pixels (0-255)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = np.ascontiguousarray(image[:, :, :3])
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"image shape {image.shape} is not HxWx3 (BGR), HxWx4 (BGRA) or HxW (gray); convert it first")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise UsageError(f"image shape {image.shape} is empty; pass an image at least 1x1")
    return image


def compute_scale(height: int, width: int, target: int, max_size: int) -> float:
    """Short side to `target` unless the long side would then pass `max_size`."""
    scale = float(target) / float(min(height, width))
    if np.round(scale * max(height, width)) > max_size:
        scale = float(max_size) / float(max(height, width))
    return scale


def prepare(image: np.ndarray, pixel_means, target: int, max_size: int, stride: int) -> ImageBlob:
    """Detectron's `get_image_blob` for one image (BGR uint8 HxWx3)."""
    height, width = image.shape[:2]
    im = (image.astype(np.float64) - np.asarray(pixel_means, dtype=np.float64)).astype(np.float32)
    scale = compute_scale(height, width, target, max_size)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if im.ndim == 2:  # cv2 drops a singleton channel axis; never for 3 channels, kept for safety
        im = im[:, :, None]
    rh, rw = im.shape[:2]
    ph, pw = int(math.ceil(rh / stride) * stride), int(math.ceil(rw / stride) * stride)
    data = torch.zeros((1, 3, ph, pw), dtype=torch.float32)
    data[0, :, :rh, :rw] = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))
    im_info = torch.tensor([[ph, pw, scale]], dtype=torch.float64).to(torch.float32)
    return ImageBlob(data=data, im_info=im_info, scale=scale, image_size=(height, width))
