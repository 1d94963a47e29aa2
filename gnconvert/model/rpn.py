"""The FPN RPN head (FPN.add_fpn_rpn_outputs): one set of weights shared by P2..P6."""
from __future__ import annotations

from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import Architecture


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness logits (A) and 1x1 box deltas (4A, channel 4a+k)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        dim, a = arch.fpn_dim, arch.num_anchors
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.cls_logits = nn.Conv2d(dim, a, 1)
        self.bbox_pred = nn.Conv2d(dim, 4 * a, 1)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: objectness LOGITS [N, A, H, W] (no sigmoid) and deltas [N, 4A, H, W]."""
        logits: List[Tensor] = []
        deltas: List[Tensor] = []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas
