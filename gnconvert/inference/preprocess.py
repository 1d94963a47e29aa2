"""The network input exactly as Detectron builds it (utils/blob.py), and the images it takes.

`load_image` (host, before the pipeline): a path, a numpy array, a PIL image or a
torch tensor -> the BGR uint8 H x W x 3 array `cv2.imread` would give.

`input_blob` (the pipeline's first stage, torch on any device): uint8 BGR ->
float64 minus PIXEL_MEANS -> float32 -> OpenCV's bilinear resize by the factor s
itself (`cv2_resize`, bit-exact with OpenCV's IPP path) -> zero pad bottom/right
to a multiple of the coarsest FPN stride; im_info = (padded h, padded w, s).
"""
from __future__ import annotations

import math
import os
from typing import Any, Tuple

import numpy as np
import torch
from torch import Tensor

from gnconvert.errors import UsageError
from gnconvert.inference import exportable
from gnconvert.inference.cv2_resize import resize_by_factor, round_half_even

CHANNEL_ORDERS = ("BGR", "RGB")


def load_image(image: Any, channel_order: str = "BGR") -> np.ndarray:
    """A BGR uint8 HxWx3 array, as cv2.imread gives it, from what a user holds.

    image: a path (decoded by OpenCV, always BGR), a PIL image (its own mode decides),
    or an HxWx3 / HxWx4 / HxW uint8 numpy array or torch tensor in `channel_order`
    ("BGR", OpenCV's and Detectron's order, or "RGB").  Grayscale is replicated to
    three channels and alpha dropped, as `cv2.imread(path)` does with such files.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order {channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}")
    if isinstance(image, (str, os.PathLike)):
        return _read(os.fspath(image))
    if type(image).__module__.startswith("PIL."):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise UsageError(f"image tensor of dtype {image.dtype} is not supported; pass uint8 pixels (0-255), HxWx3")
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise UsageError(f"image of type {type(image).__name__} is not supported; "
                         "pass a path, a PIL image, or a uint8 HxWx3 numpy array or torch tensor")
    if image.dtype != np.uint8:
        raise UsageError(f"image dtype {image.dtype} is not supported; pass uint8 pixels (0-255)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"image shape {image.shape} is not HxWx3, HxWx4 or HxW; convert it first")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise UsageError(f"image shape {image.shape} is empty; pass an image at least 1x1")
    if channel_order == "RGB":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _read(path: str) -> np.ndarray:
    import cv2

    if not os.path.isfile(path):
        raise UsageError(f"image {path!r} does not exist; pass an existing image file")
    im = cv2.imread(path, cv2.IMREAD_COLOR)
    if im is None:
        raise UsageError(f"image {path!r} could not be decoded by OpenCV; pass a JPEG or PNG file")
    return im


def compute_scale(height: float, width: float, target: int, max_size: int) -> float:
    """Short side to `target` unless the long side would then pass `max_size` (numpy's round)."""
    scale = float(target) / float(min(height, width))
    if round_half_even(scale * float(max(height, width))) > max_size:
        scale = float(max_size) / float(max(height, width))
    return scale


def input_blob(image: Tensor, pixel_means: Tensor, target: int, max_size: int, stride: int
               ) -> Tuple[Tensor, Tensor, float]:
    """Detectron's `get_image_blob` for one (H, W, 3) uint8 BGR image tensor ->
    (1, 3, H_pad, W_pad) float32 input, im_info (3,) float32, and the float64 scale."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return exportable.traced("stages").input_blob(image, pixel_means, target, max_size, stride)
    height, width = image.shape[0], image.shape[1]
    im = (image.to(torch.float64) - pixel_means).to(torch.float32)  # (H, W, 3)
    scale = compute_scale(float(height), float(width), target, max_size)
    rh, rw = round_half_even(height * scale), round_half_even(width * scale)
    ph = int(math.ceil(float(rh) / float(stride))) * stride
    pw = int(math.ceil(float(rw) / float(stride))) * stride
    data = torch.zeros((1, 3, ph, pw), dtype=torch.float32, device=image.device)
    resize_by_factor(im, scale, out=data[0].permute(1, 2, 0)[:rh, :rw])
    dev = image.device
    im_info = torch.stack((torch.full((), float(ph), device=dev), torch.full((), float(pw), device=dev),
                           torch.full((), scale, dtype=torch.float32, device=dev)))
    return data, im_info, scale
