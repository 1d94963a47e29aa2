"""ResNetClassifier: an ImageNet backbone as Detectron trained it (body + `pred` fc); run by inference.Classifier."""
from __future__ import annotations

from torch import Tensor, nn

from gnconvert.architecture import Architecture
from gnconvert.model.resnet import ResNetBody


class ResNetClassifier(nn.Module):
    """body -> global average pool of res5 -> fc; the body's keys equal a detector's `body.*`."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.body = ResNetBody(arch)
        self.fc = nn.Linear(arch.stages[-1].out, arch.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, 224, 224] -> logits [N, num_classes]."""
        res5 = self.body(x)[3]
        return self.fc(res5.mean(dim=(2, 3)))
