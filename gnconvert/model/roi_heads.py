"""Box and mask heads on RoIAlign features (fast_rcnn_heads.py, mask_rcnn_heads.py)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import GN, Architecture, BoxHeadType, MaskHeadType
from gnconvert.model.float32 import outputs_in_float32
from gnconvert.model.norm import NONE, ConvNorm


class ConvFCBoxHead(nn.Sequential):
    """GN head (add_roi_Xconv1fc_gn_head): X x [3x3 conv, GN, ReLU], then fc6 + ReLU; no fc7.

    [R, C, 7, 7] -> [R, 1024], after ReLU.
    """

    def __init__(self, arch: Architecture):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        dim_in = arch.fpn_dim
        for i in range(1, arch.box_head_num_convs + 1):
            layers[f"conv{i}"] = ConvNorm(dim_in, arch.box_head_conv_dim, 3, norm=GN, num_groups=arch.gn_groups,
                                          eps=arch.gn_eps, relu=True)
            dim_in = arch.box_head_conv_dim
        layers["flatten"] = nn.Flatten(1)
        layers["fc6"] = nn.Linear(dim_in * arch.box_roi_resolution ** 2, arch.mlp_head_dim)
        layers["relu"] = nn.ReLU()
        super().__init__(layers)


class MLPBoxHead(nn.Module):
    """BN* head (add_roi_2mlp_head): fc6 + ReLU, fc7 + ReLU."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.fc6 = nn.Linear(arch.fpn_dim * arch.box_roi_resolution ** 2, arch.mlp_head_dim)
        self.fc7 = nn.Linear(arch.mlp_head_dim, arch.mlp_head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[R, C, 7, 7] -> [R, 1024], after ReLU."""
        x = F.relu(self.fc6(torch.flatten(x, 1)))
        return F.relu(self.fc7(x))


class BoxPredictor(nn.Module):
    """Class logits (softmax is the pipeline's) and class-specific box deltas, 4 columns per class."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.cls_score = nn.Linear(arch.mlp_head_dim, arch.num_classes)
        self.bbox_pred = nn.Linear(arch.mlp_head_dim, 4 * arch.num_classes)
        self.float32_outputs = False  # scores and deltas in float32 inside a bf16 network (model.float32)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.float32_outputs and not torch.jit.is_scripting():
            scores, deltas = outputs_in_float32([self.cls_score, self.bbox_pred], x)
            return scores, deltas
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """4 x [3x3 conv (GN or bias), ReLU], 2x2/2 transposed conv + ReLU, 1x1 class logits."""

    def __init__(self, arch: Architecture):
        super().__init__()
        norm = GN if arch.mask_head == MaskHeadType.CONVS_GN else NONE
        dim_in, dim = arch.fpn_dim, arch.mask_dim
        kw: Dict[str, Any] = dict(norm=norm, num_groups=arch.gn_groups, eps=arch.gn_eps, relu=True)
        for i in range(1, 5):
            self.add_module(f"fcn{i}", ConvNorm(dim_in if i == 1 else dim, dim, 3, **kw))
        self.deconv = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, arch.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """[R, C, 14, 14] -> mask LOGITS [R, num_classes, 28, 28] (no sigmoid)."""
        x = self.fcn4(self.fcn3(self.fcn2(self.fcn1(x))))
        return self.logits(F.relu(self.deconv(x)))


def build_box_head(arch: Architecture) -> nn.Module:
    if arch.box_head == BoxHeadType.CONVS_FC_GN:
        return ConvFCBoxHead(arch)
    if arch.box_head == BoxHeadType.TWO_FC:
        return MLPBoxHead(arch)
    raise ValueError(f"unknown box head {arch.box_head!r}")


class BoxOutputs(nn.Module):
    """A network's box head and box predictor as one module (RoI features -> class logits, box
    deltas): what compiles as one graph in a fast mode and exports as one ONNX file."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.box_head, self.box_predictor = network.box_head, network.box_predictor

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(x))
