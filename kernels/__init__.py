"""Custom GPU kernels.  Importing this package never needs Triton or a GPU.

`kernels.group_norm` stays the module (call `kernels.group_norm.group_norm(...)`):
re-exporting the function under the same name would hide the module.
"""
from . import group_norm
from .group_norm import Backend, GroupNorm, GroupNormReLU, choose_backend

__all__ = ["group_norm", "Backend", "GroupNorm", "GroupNormReLU", "choose_backend"]
