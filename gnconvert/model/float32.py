"""Layers whose outputs stay float32 in a bfloat16 network: the RPN's and the box predictor's.

Their scores and deltas feed the exact float32 post-processing (top-k, NMS, decoding), and in
bfloat16 the RPN's scores would tie by the hundreds and slow the numpy-order sorts; at under 1%
of the work, they keep float32.  A model built for the bf16 mode sets `float32_outputs` on them.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn


@torch.jit.unused
def outputs_in_float32(layers: Sequence[nn.Module], x: Tensor) -> List[Tensor]:
    """Each layer's output on x as float32, bfloat16 autocast off."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        return [layer(x) for layer in layers]
