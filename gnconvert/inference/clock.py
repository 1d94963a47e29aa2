"""Per-stage wall time for `Detector.run_stages`, waiting for the GPU so a stage pays its own work.

(No `from __future__ import annotations` here: TorchScript reads this function's signature as real
types when it compiles the stage runner that calls it, and skips its body as unused.)
"""
import time
from typing import Dict

import torch

LAST = "_last"  # where a `times` dict keeps the moment of its last lap


@torch.jit.unused
def lap(times: Dict[str, float], stage: str, device: torch.device) -> None:
    """Charge the time since the last lap to `stage`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    times[stage] = times.get(stage, 0.0) + now - times.get(LAST, now)
    times[LAST] = now
