"""The README's main job: `gnconvert selftest` passes, and fails when the reference disagrees."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from gnconvert.fidelity import selftest


def test_selftest_cli_passes_offline(tmp_path):
    env = {"GNCONVERT_OFFLINE": "1", "GNCONVERT_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "gnconvert", "selftest", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest PASSED" in proc.stdout
    assert "100/100 of Detectron's matched" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "the temporary checkpoint must be cleaned up"


def test_selftest_fails_when_detectron_disagrees(tmp_path):
    """Relabel Detectron's two highest-scoring detections: the run must no longer pass."""
    bundle = tmp_path / "bundle"
    shutil.copytree(selftest.BUNDLE, bundle)
    ref = bundle / "detectron" / f"{selftest.TAG}.json"
    data = json.loads(ref.read_text())
    dets = data[selftest.IMAGE]["detections"]
    for d in sorted(dets, key=lambda d: -d["score"])[:2]:
        d["category_index"] = d["category_index"] % 80 + 1
    ref.write_text(json.dumps(data))
    result = selftest.run(workdir=str(tmp_path), bundle=bundle)
    assert not result.passed
    assert result.report.match.matched_fraction == pytest.approx(0.98)
    assert "selftest FAILED" in result.format()
