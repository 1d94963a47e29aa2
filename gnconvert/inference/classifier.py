"""`Classifier`: an ImageNet backbone checkpoint ready to run, as Detectron fed it its images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor

from gnconvert.inference.loaded import LoadedModel


def detectron_crop(bgr):
    """Detectron's ImageNet test crop of a uint8 BGR image, 224 x 224: short side to 256 (OpenCV bilinear), centre."""
    import cv2
    import numpy as np

    h, w = bgr.shape[:2]
    scale = 256.0 / min(h, w)
    im = cv2.resize(bgr, (max(224, round(w * scale)), max(224, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    top, left = (im.shape[0] - 224) // 2, (im.shape[1] - 224) // 2
    return np.ascontiguousarray(im[top: top + 224, left: left + 224])


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # 0..999, ImageNet's synset order
    name: str
    probability: float


class Classifier(LoadedModel):
    """A `ResNetClassifier` network with its runtime (always the exact mode) and provenance."""

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, 224, 224] BGR minus PIXEL_MEANS -> logits [N, num_classes], in float32 (not TF32)."""
        with self.runtime.numerics():
            return self.network(x)

    @torch.no_grad()
    def predict(self, image, k: int = 5, channel_order: str = "BGR") -> List[ImageNetClass]:
        """The k most likely ImageNet classes for one image (a path, PIL image, array or tensor).

        The image is given as Detectron gives these bodies their input: BGR pixels minus
        PIXEL_MEANS, no scaling by a standard deviation; short side resized to 256 (OpenCV,
        bilinear) and the central 224 x 224 crop.  Names are ImageNet's, in synset order.
        """
        import numpy as np
        from torchvision.models import ResNet50_Weights

        from gnconvert.inference.preprocess import load_image

        crop = detectron_crop(load_image(image, channel_order)).astype(np.float32) - np.array(self.arch.pixel_means,
                                                                                              np.float32)
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None].to(self.device)
        probs = torch.softmax(self(x)[0], dim=0).cpu()
        names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"] if probs.numel() == 1000 else None
        best = torch.topk(probs, min(k, probs.numel()))
        return [ImageNetClass(int(i), names[int(i)] if names else str(int(i)), float(p))
                for p, i in zip(best.values, best.indices)]
