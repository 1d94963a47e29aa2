"""The one place that sets PyTorch's TF32 flags (cuDNN and cuBLAS float32 precision on CUDA).

The flags are process-wide, so `tf32(allowed)` is a gate: threads holding it with the same setting run
together, a thread wanting the other setting waits for them to leave, and the last one out restores
what the process had.  (bfloat16 autocast needs no gate: PyTorch keeps it per thread.)
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Tuple

import torch


class _Tf32Gate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._setting: Optional[bool] = None  # what the holders run with; None when nobody holds the gate
        self._holders = 0
        self._saved: Tuple[bool, bool] = (False, False)

    @contextlib.contextmanager
    def hold(self, allowed: bool) -> Iterator[None]:
        with self._cond:
            while self._holders and self._setting != allowed:
                self._cond.wait()
            if not self._holders:
                self._saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
                self._setting = allowed
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                if not self._holders:
                    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._saved
                    self._setting = None
                    self._cond.notify_all()


_GATE = _Tf32Gate()


def tf32(allowed: bool) -> contextlib.AbstractContextManager:
    """CUDA float32 convolutions and matmuls on TF32 tensor cores (allowed) or as float32, for the block."""
    return _GATE.hold(allowed)


def exact_fp32() -> contextlib.AbstractContextManager:
    """float32 as float32: PyTorch lets cuDNN use TF32 by default, which moves CUDA results by ~1e-3
    before GroupNorm is even reached."""
    return tf32(False)
