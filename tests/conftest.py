"""Shared test fixtures: where Detectron's golden outputs live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run on the CPU in Triton's interpreter; this must be set
# before anything imports triton, so it is decided here for the whole session.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GNCONVERT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"Detectron golden outputs not found at {GOLDEN}; set GNCONVERT_SHARED")
    return GOLDEN


@pytest.fixture(scope="session")
def seeded_pickle(tmp_path_factory, golden_dir):
    """Factory: arch name (a golden inventory name) -> path of a full-size seeded (seed 1) checkpoint
    written as Detectron writes it: a Python-2 protocol-2 pickle with the real cfg text embedded."""
    from gnconvert import architecture
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
    from gnconvert.fidelity import seeded

    made = {}

    def make(arch_name: str, seed: int = 1):
        key = (arch_name, seed)
        if key not in made:
            arch = architecture.REFERENCE_ARCHITECTURES[arch_name]
            cfg = golden_dir / "cfg" / f"{arch_name}.yaml"
            path = tmp_path_factory.mktemp("seeded") / f"{arch_name}_seed{seed}.pkl"
            write_detectron_pickle(path, seeded.seeded_blobs(arch, seed),
                                   cfg_text=cfg.read_text() if cfg.is_file() else None)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """torch.compile's on-disk cache in a folder of this session, not the user's cache."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield os.environ["TORCHINDUCTOR_CACHE_DIR"]
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """Autograd's mode is thread-local global state: a test (or the code it runs) that leaves it off
    breaks later tests that train, far from the cause, so it fails here instead."""
    torch.set_grad_enabled(True)
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left disabled by this test or the code it ran")
