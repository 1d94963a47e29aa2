"""Which device a model runs on: asked for once, checked once."""
from __future__ import annotations

from typing import Union

import torch

from gnconvert.errors import UsageError


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """'auto' (or None) picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device} is not supported; use cpu, cuda, cuda:N or auto")
    return dev
