"""Custom GPU kernels.  Importing this package never needs Triton or a GPU.

`kernels.group_norm` stays the module (call `kernels.group_norm.group_norm(...)`):
re-exporting the function under the same name would hide the module.
"""
from gnconvert.kernels import group_norm
from gnconvert.kernels.group_norm import GroupNorm, GroupNormReLU, is_available

__all__ = ["group_norm", "GroupNorm", "GroupNormReLU", "is_available"]
