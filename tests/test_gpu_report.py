"""scripts/gpu_report.py runs end to end before a GPU is ever lent: its dry run (CPU, tiny
inputs, Triton's interpreter) goes through every step and writes both files, and a step
that overruns its time box is killed without losing the others."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_RUN = ["env", "parity", "groupnorm", "predict", "tests", "verify", "modes", "compile"]


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_report", REPO / "scripts" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_every_step(tmp_path, golden_dir):
    done = subprocess.run([sys.executable, "scripts/gpu_report.py", "--dry-run", "--out", str(tmp_path), "--steps",
                           *STEPS_RUN], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    gpu_report = _report_module()
    plan = ", ".join(f"{name} {gpu}" for name, (gpu, _) in gpu_report.STEPS.items())
    assert f"CUDA time boxes (s): {plan}; sum {gpu_report.planned_seconds()} of the 480 s budget" in done.stdout
    [json_file] = tmp_path.glob("*-dry-run-cpu.json")
    report = json.loads(json_file.read_text())
    assert report["dry_run"] and report["commit"] != "unknown"
    assert list(report["steps"]) == STEPS_RUN
    assert all(s["status"] == "ok" for s in report["steps"].values()), report["steps"]
    steps = {name: s["result"] for name, s in report["steps"].items()}
    assert steps["env"]["torch"] and steps["env"]["dry_run"]
    assert steps["tests"]["returncode"] == 0
    assert steps["groupnorm"]["configs"][0]["sites"] and steps["groupnorm"]["configs"][0]["totals"]["ours_ms"] > 0
    assert all(per["triton"]["detections"] > 0 for per in steps["predict"]["images"].values())
    assert steps["parity"]["cases"] == [{"tag": "R-50-FPN-GN_seed1", "image": "chelsea.png", "verdict": "PASS"}]
    assert steps["verify"]["images"] == 2 and steps["verify"]["images_per_s"] > 0
    assert set(steps["modes"]) == {"device", "fp32", "bf16"} and set(steps["compile"]) == {"device", "fp32",
                                                                                           "fp32+compile"}
    assert steps["compile"]["fp32+compile"]["graphs"] > 0 and steps["modes"]["bf16"]["graphs"] == 0
    assert steps["modes"]["bf16"]["fidelity"]["images"][0]["image"] == "tiny_chelsea.png"
    markdown = json_file.with_suffix(".md").read_text()
    assert "DRY RUN" in markdown and "## Golden parity on cpu" in markdown and "| chelsea.png | PASS |" in markdown
    assert "## Run modes: compile (cpu)" in markdown and "| fp32+compile |" in markdown


def test_the_cuda_time_boxes_fit_one_device_call():
    """A lent device runs one call of at most 600 s (540 asked for, the wheels' install inside it):
    the boxes must sum to under 480 s, most valuable steps first."""
    gpu_report = _report_module()
    assert sum(gpu for gpu, _ in gpu_report.STEPS.values()) == gpu_report.planned_seconds() < 480
    assert gpu_report.BUDGET_S == 480
    assert list(gpu_report.STEPS)[:4] == ["env", "parity", "groupnorm", "predict"]
    header = (REPO / "scripts" / "gpu_run.sh").read_text().split("set -uo")[0]
    assert 'carry: [".whl", ".gl"]' in header and "timeout_s: 540" in header and "bash scripts/gpu_run.sh" in header


def test_a_step_over_its_time_box_is_killed_and_the_earlier_ones_kept(tmp_path, golden_dir):
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "scripts/gpu_report.py", "--dry-run", "--out", str(tmp_path), "--steps",
                           "env", "predict", "--box", "predict=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert time.perf_counter() - t0 < 200
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    [json_file] = tmp_path.glob("*-dry-run-cpu.json")
    steps = json.loads(json_file.read_text())["steps"]
    assert steps["env"]["status"] == "ok" and steps["env"]["result"]["torch"]
    assert steps["predict"]["status"] == "timed out after 3 s" and "result" not in steps["predict"]
    assert "| predict | timed out after 3 s |" in json_file.with_suffix(".md").read_text()
