"""Fine-tuning the exported torchvision models with gnconvert's Triton GroupNorm.

`use_group_norm_kernel(model)` swaps every `nn.GroupNorm` of a model (torchvision's, timm's, any)
for `gnconvert.kernels.GroupNorm`, an `nn.GroupNorm` subclass whose forward and backward run the
fused Triton kernel on CUDA and PyTorch's GroupNorm elsewhere.  The swap keeps the very Parameter
objects (an optimizer made before it still holds them), the state-dict keys and the numerics
(Caffe2's GroupNorm is PyTorch's), so checkpoints load and save as before.
"""
from __future__ import annotations

from typing import Optional

from torch import nn


def use_group_norm_kernel(model: nn.Module, kernel: Optional[bool] = None) -> int:
    """Replace `model`'s nn.GroupNorm modules in place; returns how many were replaced.  kernel: None runs
    the Triton kernel wherever it runs (CUDA; decided once per device), True always the op, False never."""
    from gnconvert.kernels import GroupNorm

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm) and not isinstance(child, GroupNorm):
                new = GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine, device="meta",
                                kernel=kernel)
                if child.affine:
                    new.weight, new.bias = child.weight, child.bias  # the same Parameters: optimizers, ties stay valid
                setattr(parent, name, new.train(child.training))
                swapped += 1
    return swapped
