"""`LoadedModel`: what `gnconvert.load` returns, of either kind (`Detector`, `Classifier`).

A converted network with its architecture record, the runtime it was built for (device, mode,
GroupNorm backend) and where its weights came from: the one thing reports ask a model about.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from gnconvert.architecture import Architecture
from gnconvert.runtime import Runtime


class LoadedModel(nn.Module):
    __jit_unused_properties__ = ["device", "mode", "group_norm"]
    __jit_ignored_attributes__ = ["runtime", "provenance"]

    def __init__(self, network: nn.Module, arch: Architecture, runtime: Optional[Runtime] = None,
                 provenance: Optional[Dict[str, str]] = None):
        super().__init__()
        self.network = network
        self.arch = arch
        self.runtime = runtime if runtime is not None else Runtime(torch.device("cpu"))
        self.provenance: Dict[str, str] = dict(provenance or {})

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def mode(self):
        """How the network runs (a gnconvert.runtime.RunMode)."""
        return self.runtime.mode

    @property
    def group_norm(self) -> Optional[str]:
        """Which GroupNorm runs, as reports say it; None for a model without GroupNorm (BN*)."""
        return str(self.runtime.group_norm) if self.arch.uses_group_norm else None
