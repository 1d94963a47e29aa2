#!/usr/bin/env python
"""The GPU report: everything gnconvert claims on a GPU, measured in one call.

    python scripts/gpu_report.py --out benchmarks/results        # a CUDA machine: <= 8 min on one H100
    python scripts/gpu_report.py --dry-run --out /tmp/report      # anywhere: tiny shapes, Triton's interpreter

The device call (scripts/gpu_bundle.sh prepares the wheels and golden files it carries;
scripts/gpu_run.sh installs the wheels there and runs this with --out $OUT):

    bash scripts/gpu_bundle.sh          # here, once per session
    device run: bash scripts/gpu_run.sh   carry [".whl", ".gl"]   timeout_s 540

Steps, in this order, each in a process of its own with its own time box, so a crash
or a hang in one still leaves the others' figures:

1. env        GPU, memory, driver, torch / torchvision / triton / CUDA versions, and the
              peak memory bandwidth measured with a device-to-device copy;
2. tests      `pytest -m gpu` on the kernel and model tests (full-size shapes on CUDA);
3. groupnorm  every GroupNorm call site of R-50-FPN GN at 800x1216, batch 1 and 2,
              float32 and bfloat16: the Triton kernel vs F.group_norm (+ add + ReLU as the
              eager model runs it) in the same run, GB/s and % of the measured peak, the sum
              over the network, and the floor (bytes it must move / measured bandwidth);
4. predict    seconds per image of `predict` at batch 1 on the golden images, kernel on and
              off (GNCONVERT_GN_KERNEL=torch), per stage (the clock synchronises CUDA), and
              images/s of `predict_batch`;
5. parity     tests/test_golden_parity.py on this device: Detectron's golden outputs, the
              same criteria and report as the CPU tests, the Triton kernel in the loop;
6. verify     `gnconvert verify` images/s (and AP) on the COCO-format set built from the
              golden images (tests/coco_fixture.py);
7. modes      fp32 (exact), tf32 and bf16 eager: s/image and fidelity to Detectron's golden
              outputs (strict and loose match shares, AP, FPN error: gnconvert.fidelity.mode_fidelity);
8. compile    fp32 and bf16 under torch.compile from an empty cache: first call (compilation),
              s/image, graphs compiled, fidelity; and the compiled fp32 golden parity.

Writes OUT/<date>-<gpu>.json (everything, with the commit it measured) and OUT/<date>-<gpu>.md
(the tables).  With --dry-run the same steps run on the CPU on tiny inputs with
TRITON_INTERPRET=1: they check that the report works, their figures mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
import gpu_report_markdown  # noqa: E402  (scripts/ is not a package)
from benchlib import GOLDEN_IMAGES, golden_dir  # noqa: E402

# name -> (seconds on a GPU, seconds in a dry run)
STEPS = {
    "env": (40, 60),
    "tests": (90, 300),
    "groupnorm": (70, 120),
    "predict": (60, 180),
    "parity": (100, 300),
    "verify": (45, 180),
    "modes": (60, 240),
    "compile": (65, 300),
}

# ----------------------------------------------------------------------------- helpers
def commit() -> str:
    """The measured commit: git's, or the one gpu_bundle.sh recorded beside the golden files."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    recorded = golden_dir().parent / "commit"
    return recorded.read_text().strip() if recorded.is_file() else "unknown"


def device_and_dtypes(dry: bool):
    import torch

    if dry or not torch.cuda.is_available():
        return torch.device("cpu"), ["float32"]
    return torch.device("cuda"), ["float32", "bfloat16"]


def seeded_checkpoint(dry: bool):
    """The seeded full-size R-50-FPN GN checkpoint (the golden one); in a dry run with a tiny test
    scale so that the CPU gets through it quickly."""
    import dataclasses

    from benchlib import seeded_checkpoint as full_size

    ckpt = full_size()
    if dry:
        ckpt.arch = dataclasses.replace(ckpt.arch, test=dataclasses.replace(ckpt.arch.test, scale=64, max_size=96))
    return ckpt


def seeded_detector(device, dry: bool):
    """`seeded_checkpoint` as an exact-mode Detector on `device`."""
    from gnconvert.api import build_model

    ckpt = seeded_checkpoint(dry)
    return build_model(ckpt, device), ckpt.arch


def run_pytest(args: List[str], env: Dict[str, str], timeout: float) -> dict:
    """pytest in a child process -> counts from its summary line and the report lines it printed."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"] + args
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    verdicts = re.findall(r"== (\S+) / (\S+): (.+)$", out, re.M)  # parity reports (test_golden_parity -s)
    return {"command": " ".join(cmd[2:]), "returncode": done.returncode, "seconds": time.perf_counter() - t0,
            "counts": counts, "cases": [{"tag": t, "image": i, "verdict": v} for t, i, v in verdicts],
            "tail": out[-3000:]}


# ----------------------------------------------------------------------------- steps
def step_env(dry: bool) -> dict:
    import platform

    import torch

    sys.path.insert(0, str(SCRIPTS))
    from bench_group_norm import measured_copy_bandwidth, spec_bandwidth

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "threads": torch.get_num_threads(), "dry_run": dry}
    for name in ("torchvision", "triton", "numpy", "cv2"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # a missing package is a fact worth recording
            info[name] = f"unavailable ({type(e).__name__})"
    device, _ = device_and_dtypes(dry)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown"
        info["copy_bandwidth_gb_s"] = measured_copy_bandwidth(device) / 1e9
        spec = spec_bandwidth(device)
        info["spec_bandwidth_gb_s"] = spec / 1e9 if spec == spec else None
    else:
        info.update(gpu="none (dry run on the CPU)" if dry else "none", copy_bandwidth_gb_s=None)
    return info


def step_tests(dry: bool) -> dict:
    env = {"TRITON_INTERPRET": "1"} if dry else {}
    return run_pytest(["-m", "gpu", "tests/test_group_norm_kernel.py", "tests/test_model_modules.py"], env,
                      STEPS["tests"][1 if dry else 0] - 5)


def step_groupnorm(dry: bool) -> dict:
    import torch

    if dry:
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(SCRIPTS))
    import bench_group_norm as bench

    device, dtypes = device_and_dtypes(dry)
    time_ms = bench.timer(device)
    copy_bw = bench.measured_copy_bandwidth(device) if device.type == "cuda" else float("nan")
    configs = []
    for dtype_name in dtypes:
        for batch in ([1] if dry else [1, 2]):
            sites = bench.tiny_sites() if dry else bench.r50_fpn_gn_sites(batch=batch)
            rows, totals = [], {"ours_ms": 0.0, "group_norm_ms": 0.0, "group_norm_ops_ms": 0.0, "bytes": 0}
            for site in sites:
                m = bench.bench_site(site, getattr(torch, dtype_name), device, time_ms)
                gbps = m["bytes"] / (m["ours"] * 1e-3) / 1e9
                rows.append({"site": site.name, "shape": list(site.shape), "count": site.count,
                             "residual": site.residual, "relu": site.relu, "ours_ms": m["ours"],
                             "group_norm_ms": m["gn"], "group_norm_ops_ms": m["full"], "speedup": m["full"] / m["ours"],
                             "gb_s": gbps, "pct_of_copy_peak": 100 * gbps * 1e9 / copy_bw, "max_err": m["max_err"]})
                totals["ours_ms"] += site.count * m["ours"]
                totals["group_norm_ms"] += site.count * m["gn"]
                totals["group_norm_ops_ms"] += site.count * m["full"]
                totals["bytes"] += site.count * m["bytes"]
            totals["speedup_vs_group_norm_ops"] = totals["group_norm_ops_ms"] / totals["ours_ms"]
            totals["speedup_vs_group_norm"] = totals["group_norm_ms"] / totals["ours_ms"]
            totals["floor_ms"] = totals["bytes"] / copy_bw * 1e3
            configs.append({"dtype": dtype_name, "batch": batch, "input": "800x1216" if not dry else "tiny stand-ins",
                            "sites": rows, "totals": totals})
    return {"copy_bandwidth_gb_s": copy_bw / 1e9, "configs": configs}


def step_predict(dry: bool) -> dict:
    import statistics

    import cv2
    import torch

    from gnconvert.kernels.group_norm import KERNEL_ENV

    device, _ = device_and_dtypes(dry)
    detector, _ = seeded_detector(device, dry)
    images = {name: cv2.imread(str(golden_dir() / "images" / name)) for name in GOLDEN_IMAGES[: 2 if dry else 5]}
    repeats = 1 if dry else 3
    out = {"device": str(device), "images": {}, "batch": {}}
    for kernel in ("triton", "torch"):
        os.environ[KERNEL_ENV] = kernel
        for name, image in images.items():
            detector.predict(image)  # warm-up: compilation, cuDNN autotuning
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                det = detector.predict(image)
                runs.append((time.perf_counter() - t0, det.timings))
            best = min(runs, key=lambda r: r[0])
            out["images"].setdefault(name, {})[kernel] = {
                "seconds": statistics.median(r[0] for r in runs), "stages": best[1], "detections": len(det)}
        batch = [images["chelsea.png" if "chelsea.png" in images else next(iter(images))]] * (2 if dry else 8)
        detector.predict_batch(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            detector.predict_batch(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["batch"][kernel] = {"batch_size": len(batch), "images_per_s": repeats * len(batch) / (time.perf_counter() - t0)}
    os.environ.pop(KERNEL_ENV, None)
    for per in out["images"].values():
        per["kernel_speedup"] = per["torch"]["seconds"] / per["triton"]["seconds"]
    return out


def step_parity(dry: bool) -> dict:
    device, _ = device_and_dtypes(dry)
    args = ["-s", "tests/test_golden_parity.py", "-k", "not compiled"]  # the compile step measures that mode
    if dry:
        args[-1] = "matches_detectron and not compiled and R-50-FPN-GN_seed1-chelsea"
    result = run_pytest(args, {"GNCONVERT_TEST_DEVICE": str(device), **({"TRITON_INTERPRET": "1"} if dry else {})},
                        STEPS["parity"][1 if dry else 0] - 5)
    result["device"] = str(device)
    return result


def step_verify(dry: bool) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from coco_fixture import build_coco

    from gnconvert.evaluation import find_layout, run_verify

    device, _ = device_and_dtypes(dry)
    detector, _ = seeded_detector(device, dry)
    with tempfile.TemporaryDirectory(prefix="gnconvert-gpu-report-") as tmp:
        coco = build_coco(Path(tmp) / "coco", golden_dir(), copies=1 if dry else 20)
        t0 = time.perf_counter()
        report = run_verify(detector, find_layout(Path(coco["root"])), Path(tmp) / "out", source="seeded R-50-FPN GN",
                            limit=2 if dry else None, workers=0 if dry else 4, progress=False, echo=lambda s: None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    metrics = report["metrics"]
    return {"device": str(device), "images": report["images_evaluated"],
            "images_per_s": report["timing"]["images_per_second"], "wall_s": wall,
            "box_ap": metrics["bbox"]["AP"], "mask_ap": metrics.get("segm", {}).get("AP"), "timing": report["timing"]}


def _time_modes(names: List[str], dry: bool, fidelity_images: List[str]) -> dict:
    import cv2
    from bench_fast_modes import modes_once

    device, _ = device_and_dtypes(dry)
    images = [cv2.imread(str(golden_dir() / "images" / n)) for n in GOLDEN_IMAGES[: 1 if dry else 2]]
    return {"device": str(device), **modes_once(seeded_checkpoint(dry), names, device, images, golden_dir(),
                                                fidelity_images, repeats=1 if dry else 3)}


def step_modes(dry: bool) -> dict:
    """fp32 (exact), tf32 (CUDA) and bf16 eager: speed and fidelity."""
    device, _ = device_and_dtypes(dry)
    names = ["fp32", "bf16"] + (["tf32"] if device.type == "cuda" else [])
    return _time_modes(names, dry, ["tiny_chelsea.png"] if dry else GOLDEN_IMAGES)


def step_compile(dry: bool) -> dict:
    """fp32 and bf16 compiled (a fresh compile cache): first call, speed, recompiles, fidelity."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gnconvert-gpu-report-inductor-")
    names = ["fp32", "fp32+compile"] if dry else ["fp32", "fp32+compile", "bf16+compile"]
    return _time_modes(names, dry, ["tiny_chelsea.png"] if dry else GOLDEN_IMAGES)


STEP_FUNCTIONS: Dict[str, Callable[[bool], dict]] = {
    "env": step_env, "tests": step_tests, "groupnorm": step_groupnorm, "predict": step_predict,
    "parity": step_parity, "verify": step_verify, "modes": step_modes, "compile": step_compile,
}


# ----------------------------------------------------------------------------- orchestration
def run_step(name: str, dry: bool, timeout: float) -> dict:
    """One step in a child process (`--step`), killed with its process group when over time."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--result", result_path]
    if dry:
        cmd.append("--dry-run")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if dry:
        env["TRITON_INTERPRET"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        status = f"timed out after {timeout:.0f} s"
    entry = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
    try:
        with open(result_path) as f:
            entry["result"] = json.load(f)
    except (OSError, ValueError):
        entry["log_tail"] = (log or "")[-3000:]
    finally:
        os.unlink(result_path)
    return entry


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the .json and .md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny inputs, Triton's interpreter")
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="a subset, in order")
    ap.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.step:  # child: run one step, write its JSON
        result = STEP_FUNCTIONS[args.step](args.dry_run)
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1, default=str)
        return 0

    started = time.perf_counter()
    report = {"commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dry_run": args.dry_run, "steps": {}}
    for name in args.steps:
        timeout = STEPS[name][1 if args.dry_run else 0]
        print(f"[gpu_report] {name} (up to {timeout} s) ...", flush=True)
        report["steps"][name] = run_step(name, args.dry_run, timeout)
        print(f"[gpu_report] {name}: {report['steps'][name]['status']} in {report['steps'][name]['seconds']} s",
              flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    env = report["steps"].get("env", {}).get("result", {})
    gpu = "dry-run-cpu" if args.dry_run else slug(env.get("gpu", "unknown-gpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{report['date'][:10]}-{gpu}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(gpu_report_markdown.markdown(report))
    print(f"[gpu_report] wrote {stem}.json and {stem}.md in {report['total_seconds']} s")
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
