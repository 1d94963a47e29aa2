"""Outputs appear whole or not at all, with the permissions any other file would get."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from gnconvert.atomic import atomic_path, write_json_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_recreated_by_its_writer_gets_normal_permissions(tmp_path):
    """safetensors' save_file recreates its file as 0600; the final file must still follow the umask."""
    out = tmp_path / "w.safetensors"
    with atomic_path(out) as tmp:
        save_file({"w": torch.zeros(3)}, tmp)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~_umask()


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer died")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
