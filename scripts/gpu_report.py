#!/usr/bin/env python
"""The GPU report: everything gnconvert claims on a GPU, measured in one device call.

    python scripts/gpu_report.py --out benchmarks/results        # a CUDA machine: under 8 min
    python scripts/gpu_report.py --dry-run --out /tmp/report      # anywhere: tiny shapes, Triton's interpreter

The device call (scripts/gpu_bundle.sh prepares the wheels and golden files it carries;
scripts/gpu_run.sh installs the wheels there and runs this with --out $OUT); its header has
the call to make, word for word.

A lent device gives 15 minutes in all, machine start included, and at most 600 s a call: the
steps' time boxes (STEPS, the CUDA column) sum to under BUDGET_S = 480 s, and they run in
the order of what each figure is worth, so that a run cut short keeps the most valuable ones.
Each step runs in a process of its own, killed at its box, and the JSON and markdown are
rewritten after every step, so a crash, a hang or the call's own timeout loses only the step
it hit.

1. env        GPU, memory, driver, torch / torchvision / triton / CUDA versions, and the
              peak memory bandwidth measured with a device-to-device copy;
2. parity     tests/test_golden_parity.py on this device (R-50 cases): Detectron's golden
              outputs, the same criteria and report as the CPU tests, the Triton kernel in the loop;
3. groupnorm  every GroupNorm call site of R-50-FPN GN at 800x1216, batch 1 and 2, float32 and
              bfloat16: the Triton kernel vs F.group_norm (+ add + ReLU as the eager model runs
              it) in the same run, GB/s and % of the measured peak, the sum over the network, and
              the floor (bytes it must move / measured bandwidth);
4. predict    seconds per image of `predict` at batch 1 on the golden images, kernel on and off
              (two models, one per GroupNorm backend), per stage (the clock synchronises CUDA),
              and images/s of `predict_batch`;
5. tests      `pytest -m gpu` on the kernel and model tests (full-size shapes on CUDA);
6. verify     `gnconvert verify` images/s (and AP) on the COCO-format set built from the
              golden images (tests/coco_fixture.py);
7. modes      fp32 (exact), tf32 and bf16 eager: s/image and fidelity to Detectron's golden
              outputs (strict and loose match shares, AP, FPN error: gnconvert.fidelity.mode_fidelity);
8. compile    fp32 and bf16 under torch.compile from an empty cache: first call (compilation),
              s/image, graphs compiled, fidelity;
9. export     the AOTInductor package for the device: build time, s/image against eager, and
              its detections against eager's (scripts/bench_export.py).

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

# name -> (time box on a GPU, time box in a dry run), in seconds, in the order the steps run: by what
# their figures are worth, the scarcest first (the CUDA golden parity, the kernel against PyTorch's)
STEPS = {
    "env": (15, 60),
    "parity": (90, 300),
    "groupnorm": (60, 120),
    "predict": (70, 180),
    "tests": (45, 300),
    "verify": (35, 180),
    "modes": (45, 240),
    "compile": (55, 300),
    "export": (45, 300),
}
BUDGET_S = 480  # the CUDA boxes' sum stays under this: one call of 540 s, with the wheels' install and a margin
DEVICE_CALL = 'run(command="bash scripts/gpu_run.sh", carry=[".whl", ".gl"], timeout_s=540)'


def planned_seconds() -> int:
    return sum(gpu for gpu, _ in STEPS.values())


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


def seeded_detector(device, dry: bool, group_norm: Optional[str] = None):
    """`seeded_checkpoint` as an exact-mode Detector on `device` (group_norm: 'triton' or 'torch')."""
    from gnconvert.api import build_model
    from gnconvert.runtime import Runtime

    ckpt = seeded_checkpoint(dry)
    return build_model(ckpt, runtime=Runtime.resolve(device, group_norm=group_norm)), ckpt.arch


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

    device, _ = device_and_dtypes(dry)
    images = {name: cv2.imread(str(golden_dir() / "images" / name)) for name in GOLDEN_IMAGES[: 2 if dry else 5]}
    repeats = 1 if dry else 3
    out = {"device": str(device), "images": {}, "batch": {}}
    for kernel in ("triton", "torch"):  # one model per GroupNorm backend, chosen when it is built
        detector, _ = seeded_detector(device, dry, group_norm=kernel)
        out.setdefault("group_norm", {})[kernel] = detector.group_norm
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
        del detector
    for per in out["images"].values():
        per["kernel_speedup"] = per["torch"]["seconds"] / per["triton"]["seconds"]
    return out


def step_parity(dry: bool) -> dict:
    device, _ = device_and_dtypes(dry)
    # R-50 (GN and BN*): R-101 has the same layers and twice the seeded checkpoint to build
    args = ["-s", "-m", "not slow", "tests/test_golden_parity.py", "-k", "not compiled"]
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

    from gnconvert.evaluation import VerifyConfig, find_layout, run_verify

    device, _ = device_and_dtypes(dry)
    detector, _ = seeded_detector(device, dry)
    with tempfile.TemporaryDirectory(prefix="gnconvert-gpu-report-") as tmp:
        coco = build_coco(Path(tmp) / "coco", golden_dir(), copies=1 if dry else 20)
        t0 = time.perf_counter()
        config = VerifyConfig(find_layout(Path(coco["root"])), Path(tmp) / "out", source="seeded R-50-FPN GN",
                              limit=2 if dry else None, workers=0 if dry else 4, progress=False)
        report = run_verify(detector, config, echo=lambda s: None)
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


def step_export(dry: bool) -> dict:
    """The AOTInductor package for the device (scripts/bench_export.py builds, times and checks it)."""
    import cv2
    from bench_export import aoti_step

    device, _ = device_and_dtypes(dry)
    images = [cv2.imread(str(golden_dir() / "images" / n)) for n in GOLDEN_IMAGES[: 1 if dry else 2]]
    return {"device": str(device), **aoti_step(seeded_checkpoint(dry), device, images, dry)}


STEP_FUNCTIONS: Dict[str, Callable[[bool], dict]] = {
    "env": step_env, "tests": step_tests, "groupnorm": step_groupnorm, "predict": step_predict,
    "parity": step_parity, "verify": step_verify, "modes": step_modes, "compile": step_compile,
    "export": step_export,
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


def _boxes(dry: bool, overrides: List[str]) -> Dict[str, float]:
    boxes = {name: float(box[1 if dry else 0]) for name, box in STEPS.items()}
    for item in overrides:
        name, _, seconds = item.partition("=")
        if name not in boxes or not seconds:
            raise SystemExit(f"--box {item}: write STEP=SECONDS with a step of {', '.join(STEPS)}")
        boxes[name] = float(seconds)
    return boxes


def _write(report: dict, out: Path, dry: bool) -> Path:
    """Both files, each replaced atomically: a run killed at any point leaves the last complete pair."""
    env = report["steps"].get("env", {}).get("result", {})
    gpu = "dry-run-cpu" if dry else slug(env.get("gpu", "unknown-gpu"))
    stem = out / f"{report['date'][:10]}-{gpu}"
    for path, text in ((stem.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n"),
                       (stem.with_suffix(".md"), gpu_report_markdown.markdown(report))):
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text)
        os.replace(tmp, path)
    return stem


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the .json and .md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny inputs, Triton's interpreter")
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="a subset, in order")
    ap.add_argument("--box", action="append", default=[], metavar="STEP=SECONDS", help="another time box for a step")
    ap.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.step:  # child: run one step, write its JSON
        result = STEP_FUNCTIONS[args.step](args.dry_run)
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1, default=str)
        return 0

    boxes = _boxes(args.dry_run, args.box)
    plan = ", ".join(f"{name} {gpu}" for name, (gpu, _) in STEPS.items())
    print(f"[gpu_report] CUDA time boxes (s): {plan}; sum {planned_seconds()} of the {BUDGET_S} s budget "
          f"(device call: {DEVICE_CALL})", flush=True)
    started = time.perf_counter()
    report = {"commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dry_run": args.dry_run, "budget_s": BUDGET_S,
              "planned_s": {name: gpu for name, (gpu, _) in STEPS.items()}, "steps": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = None
    for name in args.steps:
        print(f"[gpu_report] {name} (up to {boxes[name]:.0f} s) ...", flush=True)
        report["steps"][name] = run_step(name, args.dry_run, boxes[name])
        print(f"[gpu_report] {name}: {report['steps'][name]['status']} in {report['steps'][name]['seconds']} s",
              flush=True)
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        stem = _write(report, out, args.dry_run)  # after every step: a cut run keeps what it measured
    print(f"[gpu_report] wrote {stem}.json and {stem}.md in {report['total_seconds']} s")
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
