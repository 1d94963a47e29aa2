#!/usr/bin/env python
"""The fast modes against the exact one: speed, compile cost and fidelity, in one run.

Speed: whole `predict` (pre- and post-processing included), seeded R-50-FPN GN checkpoint,
seconds per image for each mode on two image sizes, rounds interleaved (A B C D A B C D)
so background load hits every mode alike; ratios are against fp32 eager measured in the
same run.  Compiled modes are warmed on both sizes first (their compilation is reported apart).

Compile cost (per compiled mode, each in a fresh process): cold = load + first predict with
an empty compile cache; warm = the same in a second process that finds the cache filled;
recompiles = graphs compiled while running the golden images, all of different sizes.

Fidelity (per mode): `gnconvert.fidelity.mode_fidelity` on the golden R-50-FPN GN images:
Detectron's detections matched under the strict and loose criteria, AP with Detectron's
detections as ground truth, and the FPN maps' error relative to their largest magnitude.

    python scripts/bench_fast_modes.py [--modes fp32,bf16,fp32+compile,bf16+compile]
        [--sizes 1216x800,800x800] [--rounds 3] [--device cpu] [--threads 2] [--json FILE]
        [--no-compile-cost] [--no-fidelity] [--golden ../shared/golden]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import torch
from benchlib import GOLDEN_IMAGES, golden_dir, interleaved, machine, machine_line, medians, seeded_checkpoint

REPO = Path(__file__).resolve().parents[1]
TAG = "R-50-FPN-GN_seed1"


def _mode(name: str):
    from gnconvert.runtime import RunMode

    precision, _, compiled = name.partition("+")
    if compiled not in ("", "compile"):
        raise SystemExit(f"unknown mode {name!r}: write PRECISION or PRECISION+compile")
    return RunMode.of(precision, compiled == "compile")


def _image(golden: Path, size: str) -> np.ndarray:
    """A natural image (the golden grace_hopper.jpg) resized to WxH: the network input is then
    Detectron's resize of it (short side 800)."""
    w, h = (int(v) for v in size.split("x"))
    return cv2.resize(cv2.imread(str(golden / "images" / "grace_hopper.jpg")), (w, h),
                      interpolation=cv2.INTER_LINEAR)


def speed(ckpt, names: List[str], images: Dict[str, np.ndarray], rounds: int, device: str) -> dict:
    from torch._dynamo.utils import counters

    from gnconvert.api import build_model

    models, warm = {}, {}
    for name in names:
        before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        model = build_model(ckpt, device, _mode(name), allow_slow=True)
        for im in images.values():
            model.predict(im)
        warm[name] = {"seconds": time.perf_counter() - t0, "graphs": counters["stats"]["unique_graphs"] - before}
        models[name] = model
    out = {}
    for size, im in images.items():
        runs = interleaved({n: (lambda m=m, im=im: m.predict(im)) for n, m in models.items()}, rounds, device)
        med = medians(runs.wall)
        ref = med[names[0]]
        out[size] = {n: {"seconds": med[n], "speedup": ref / med[n],
                         "stages": {k: round(v, 4) for k, v in runs.last[n].timings.items()},
                         "detections": len(runs.last[n])} for n in names}
    return {"per_size": out, "warm_up": warm}


def modes_once(ckpt, names: List[str], device, images: List[np.ndarray], golden: Path, fidelity_images: List[str],
               repeats: int = 3) -> dict:
    """Each mode in turn (one model in memory at a time): first call (compilation included),
    median s/image over `images`, graphs compiled, and fidelity on `fidelity_images`.  The
    GPU report's modes and compile steps."""
    import statistics

    from benchlib import sync
    from torch._dynamo.utils import counters

    from gnconvert.api import build_model
    from gnconvert.fidelity import mode_fidelity

    out: Dict[str, dict] = {}
    for name in names:
        graphs = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        det = build_model(ckpt, device, _mode(name), allow_slow=True)
        det.predict(images[0])
        sync(device)
        first = time.perf_counter() - t0
        for im in images[1:]:
            det.predict(im)
        runs = []
        for _ in range(repeats):
            for im in images:
                t = time.perf_counter()
                det.predict(im)
                sync(device)
                runs.append(time.perf_counter() - t)
        fid = mode_fidelity.measure(det, golden, TAG, fidelity_images, mode=name)
        out[name] = {"first_call_s": first, "seconds": statistics.median(runs),
                     "graphs": counters["stats"]["unique_graphs"] - graphs, "fidelity": fid.to_dict(),
                     "fidelity_line": fid.format()}
        del det
    if "fp32" in out:
        for name in names:
            if name != "fp32":
                out[name]["speedup_vs_fp32"] = out["fp32"]["seconds"] / out[name]["seconds"]
    return out


def _compile_child(name: str, cache: str, device: str, threads: int, golden: str) -> dict:
    """In a fresh process: load + first predict, then the golden images, counting graphs."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    torch.set_num_threads(threads)
    from torch._dynamo.utils import counters

    from gnconvert.api import build_model

    ckpt = seeded_checkpoint()
    t0 = time.perf_counter()
    model = build_model(ckpt, device, _mode(name), allow_slow=True)
    first = cv2.imread(str(Path(golden) / "images" / GOLDEN_IMAGES[0]))
    model.predict(first)
    first_s = time.perf_counter() - t0
    graphs_first = counters["stats"]["unique_graphs"]
    sizes = []
    for image in GOLDEN_IMAGES[1:]:
        im = cv2.imread(str(Path(golden) / "images" / image))
        t = time.perf_counter()
        model.predict(im)
        sizes.append({"image": image, "shape": list(im.shape[:2]), "seconds": time.perf_counter() - t,
                      "graphs_so_far": counters["stats"]["unique_graphs"]})
    return {"load_and_first_predict_s": first_s, "graphs_first_image": graphs_first,
            "graphs_total": counters["stats"]["unique_graphs"], "golden_images": sizes}


def compile_cost(names: List[str], device: str, threads: int, golden: Path) -> dict:
    from benchlib import in_child

    out = {}
    for name in names:
        if not _mode(name).compiled:
            continue
        with tempfile.TemporaryDirectory(prefix="gnconvert-compile-cache-") as cache:
            cold = in_child(_compile_child, name, cache, device, threads, str(golden))
            warm = in_child(_compile_child, name, cache, device, threads, str(golden))
        out[name] = {"cold": cold, "warm": warm,
                     "recompiles_over_golden_sizes": cold["graphs_total"] - cold["graphs_first_image"]}
    return out


def fidelity(ckpt, names: List[str], device: str, golden: Path) -> dict:
    from gnconvert.api import build_model
    from gnconvert.fidelity import mode_fidelity

    out = {}
    for name in names:
        measured = mode_fidelity.measure(build_model(ckpt, device, _mode(name), allow_slow=True), golden, TAG, GOLDEN_IMAGES, mode=name)
        print("  " + measured.format(), flush=True)
        out[name] = measured.to_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="fp32,bf16,fp32+compile,bf16+compile",
                    help="comma-separated; the first is the reference of the ratios")
    ap.add_argument("--sizes", default="1216x800,800x800", help="image sizes WxH (input: short side 800)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--golden", type=Path, default=golden_dir())
    ap.add_argument("--no-compile-cost", action="store_true")
    ap.add_argument("--no-fidelity", action="store_true")
    ap.add_argument("--allow-slow", action="store_true", help="measure modes this CPU would run slower than fp32")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    names = args.modes.split(",")
    for n in names:  # a mode this CPU would run slower than fp32 is measured only when asked for
        for warning in _mode(n).check(torch.device(args.device), allow_slow=args.allow_slow):
            print(f"warning: {warning}")
    print(machine_line())
    print(f"device {args.device}, {args.threads} threads, modes {', '.join(names)}, reference {names[0]}", flush=True)
    ckpt = seeded_checkpoint()
    images = {s: _image(args.golden, s) for s in args.sizes.split(",")}
    result: dict = {"machine": machine(), "device": args.device, "threads": args.threads, "modes": names}

    result["speed"] = speed(ckpt, names, images, args.rounds, args.device)
    for size, per in result["speed"]["per_size"].items():
        print(f"whole predict, image {size}, median of {args.rounds}:")
        for n, r in per.items():
            print(f"  {n:14s} {r['seconds']:.3f} s/image  {r['speedup']:.2f}x  ({r['detections']} detections; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["stages"].items()) + ")")
    for n, w in result["speed"]["warm_up"].items():
        print(f"  warm-up {n}: {w['seconds']:.1f} s for load + one predict per size, {w['graphs']} graphs compiled")

    if not args.no_compile_cost:
        result["compile_cost"] = compile_cost(names, args.device, args.threads, args.golden)
        for n, c in result["compile_cost"].items():
            print(f"compile cost {n}: cold {c['cold']['load_and_first_predict_s']:.1f} s, warm (second process, "
                  f"cache filled) {c['warm']['load_and_first_predict_s']:.1f} s for load + first predict; "
                  f"{c['recompiles_over_golden_sizes']} recompile(s) over {len(GOLDEN_IMAGES)} golden image sizes "
                  f"(warm process: {c['warm']['graphs_total'] - c['warm']['graphs_first_image']})")

    if not args.no_fidelity:
        print(f"fidelity on {TAG}, {len(GOLDEN_IMAGES)} golden images (seeded weights: far more sensitive to "
              "rounding than trained ones):")
        result["fidelity"] = fidelity(ckpt, names, args.device, args.golden)

    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"figures: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
