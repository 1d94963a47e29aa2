#!/usr/bin/env python
"""Eager vs TorchScript vs the torch.export program (vs an AOTInductor package): s/image, build time, memory.

    python scripts/bench_export.py                        # 800x1216 and 480x640, 2 threads, CPU
    python scripts/bench_export.py --rounds 5 --json out.json
    python scripts/bench_export.py --aoti                 # also AOTInductor-compile the program (slow)

One seeded R-50-FPN GN checkpoint (scripts/benchlib.seeded_checkpoint).  The four runners are
built in this process (export time and AOTInductor compile time reported), checked against the
eager `Detector` bit for bit on every image, then timed interleaved (E T P A E T P A ...).
Peak RSS: a fresh interpreter that loads each artifact and runs one image, nothing else.
Ratios are eager's s/image over each runner's (above 1: faster than eager).

--aoti: compiles the program as `gnconvert export --to aoti` does (inductor lite mode, see
gnconvert/export/aoti.py; about 7.5 min on this project's 2-core CPU machine).  `aoti_step` (the GPU
report's export step, in a child process with a time box) builds the same package for CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from benchlib import golden_dir, interleaved, machine_line, medians, peak_rss_mb_in_child, seeded_checkpoint

OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs", "masks")


def image_of_size(height: int, width: int) -> np.ndarray:
    """A golden photo resized (OpenCV, bilinear) to height x width: real content, a chosen size."""
    im = cv2.imread(str(golden_dir() / "images" / "astronaut.png"))
    return np.ascontiguousarray(cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR))


def identical(a: dict, b: dict) -> bool:
    return all(a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu()) for k in OUTPUT_NAMES)


def build(ckpt, folder: str, device: str, aoti: bool = False) -> dict:
    """name -> (runner, seconds to build it); the artifacts are written into `folder`."""
    from gnconvert.export import exported_program
    from gnconvert.export.common import loaded_network
    from gnconvert.export.torchscript import script

    network = loaded_network(ckpt)
    eager = exported_program.detector(ckpt, network, device)
    runners, seconds = {"eager": eager}, {"eager": 0.0}
    if device == "cpu":
        t0 = time.perf_counter()
        runners["torchscript"] = script(ckpt, network)
        seconds["torchscript"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    program = exported_program.trace(ckpt, network, device)
    seconds["export"] = time.perf_counter() - t0
    torch.export.save(program, os.path.join(folder, "model.pt2"))
    runners["export"] = program.module()
    if not aoti:
        return {"runners": runners, "build_seconds": seconds, "eager": eager}
    t0 = time.perf_counter()
    import torchvision  # noqa: F401  (torch.export.load needs torchvision::roi_align registered)

    from gnconvert.export.aoti import compile_package

    # a copy of the program, read back: compile_package rewrites its program in place, and runners["export"] is timed
    package = compile_package(torch.export.load(os.path.join(folder, "model.pt2")), os.path.join(folder, "aoti.pt2"))
    seconds["aoti"] = time.perf_counter() - t0
    runners["aoti"] = torch._inductor.aoti_load_package(package)
    return {"runners": runners, "build_seconds": seconds, "eager": eager}


def load_and_run(kind: str, path: str, image: np.ndarray) -> None:
    """What a user's loading snippet does (measured in a fresh interpreter for its peak RSS)."""
    import torch
    import torchvision  # noqa: F401

    torch.set_num_threads(2)
    if kind == "torchscript":
        model = torch.jit.load(path)
    elif kind == "export":
        model = torch.export.load(path).module()
    else:
        model = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        model(torch.from_numpy(image))


def aoti_step(ckpt, device, images, dry: bool) -> dict:
    """For scripts/gpu_report.py: build the AOTInductor package for `device`, check it against eager
    on `images` (BGR arrays), and time both (s/image, medians)."""
    dev = str(device)
    with tempfile.TemporaryDirectory() as folder:
        built = build(ckpt, folder, dev, aoti=True)
        eager, aoti = built["runners"]["eager"], built["runners"]["aoti"]
        xs = [torch.from_numpy(im).to(dev) for im in images]
        with torch.no_grad(), eager.runtime.numerics():
            same = [identical(eager(x), aoti(x)) for x in xs]
            runs = interleaved({"eager": lambda: [eager(x) for x in xs], "aoti": lambda: [aoti(x) for x in xs]},
                               rounds=1 if dry else 3, device=dev)
    per = {k: v / len(xs) for k, v in medians(runs.wall).items()}
    return {"export_s": built["build_seconds"]["export"], "aoti_compile_s": built["build_seconds"]["aoti"],
            "s_per_image": per, "aoti_speedup": per["eager"] / per["aoti"], "bit_identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="800x1216,480x640", help="HxW of the timed images, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--aoti", action="store_true", help="also compile and time an AOTInductor package")
    ap.add_argument("--no-rss", action="store_true", help="skip the loading snippets' peak RSS")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    images = {f"{h}x{w}": image_of_size(h, w) for h, w in sizes}
    report: dict = {"machine": machine_line(), "threads": args.threads, "device": args.device, "sizes": {}}
    with tempfile.TemporaryDirectory() as folder:
        built = build(seeded_checkpoint(), folder, args.device, args.aoti)
        runners = built["runners"]
        report["build_seconds"] = built["build_seconds"]
        print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in built["build_seconds"].items() if k != "eager"))
        if "torchscript" in runners:
            torch.jit.save(runners["torchscript"], os.path.join(folder, "model.pt"))
        for size, im in images.items():
            x = torch.from_numpy(im).to(args.device)
            with torch.no_grad():
                want = runners["eager"](x)
                same = {k: identical(want, r(x)) for k, r in runners.items() if k != "eager"}
                # two warm-up rounds: TorchScript's profiling executor optimises on its second call
                runs = interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, rounds=args.rounds,
                                   device=args.device, warmup=2)
            per = medians(runs.wall)
            report["sizes"][size] = {"s_per_image": per, "vs_eager": {k: per["eager"] / v for k, v in per.items()},
                                     "bit_identical_to_eager": same, "detections": int(want["scores"].shape[0])}
            print(f"{size}: " + ", ".join(f"{k} {v:.3f} s ({per['eager'] / v:.2f}x)" for k, v in per.items())
                  + "; bit-identical: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
        files = {"torchscript": "model.pt", "export": "model.pt2", "aoti": "aoti.pt2"}
        report["artifact_mib"] = {k: os.path.getsize(os.path.join(folder, n)) / 2**20 for k, n in files.items()
                                  if os.path.exists(os.path.join(folder, n))}
        print("artifacts: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in report["artifact_mib"].items()))
        if not args.no_rss:
            small = images[list(images)[-1]]
            report["load_and_run_peak_rss_mb"] = {
                kind: peak_rss_mb_in_child(load_and_run, kind, os.path.join(folder, name), small)
                for kind, name in files.items() if os.path.exists(os.path.join(folder, name))}
            print("peak RSS of load + one image: " + ", ".join(
                f"{k} {v:.0f} MiB" for k, v in report["load_and_run_peak_rss_mb"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
