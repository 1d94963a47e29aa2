"""The FPN RPN head (FPN.add_fpn_rpn_outputs): one set of weights shared by P2..P6."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnconvert.architecture import Architecture
from gnconvert.model.float32 import outputs_in_float32


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness logits (A) and 1x1 box deltas (4A, channel 4a+k)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        dim, a = arch.fpn_dim, arch.num_anchors
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.cls_logits = nn.Conv2d(dim, a, 1)
        self.bbox_pred = nn.Conv2d(dim, 4 * a, 1)
        self.float32_outputs = False  # logits and deltas in float32 inside a bf16 network (model.float32)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: objectness LOGITS [N, A, H, W] (no sigmoid) and deltas [N, 4A, H, W]."""
        logits: List[Tensor] = []
        deltas: List[Tensor] = []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            if self.float32_outputs and not torch.jit.is_scripting():
                level_logits, level_deltas = outputs_in_float32([self.cls_logits, self.bbox_pred], hidden)
            else:
                level_logits, level_deltas = self.cls_logits(hidden), self.bbox_pred(hidden)
            logits.append(level_logits)
            deltas.append(level_deltas)
        return logits, deltas
