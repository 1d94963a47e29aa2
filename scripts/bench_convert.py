"""Benchmark: reading and converting a full-size Detectron checkpoint.

Builds a seeded R-50-FPN GN `model_final.pkl` (~370 MB, written the way Python 2
Detectron wrote it), then, in one run:
- reads it with our safe reader and with plain `pickle.load(f, encoding='latin1')`
  (the unsafe reference), each in a fresh subprocess, alternating, several times;
  prints the time ratio (target <= 1.5) and each one's peak RSS;
- times the whole `gnconvert convert` (a subprocess, as a user runs it);
- prints the reader's peak RSS over the file size (target <= 2).

    python scripts/bench_convert.py [--repeats 3] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_CFG = REPO.parent / "shared" / "golden" / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"

# Each child loads the file once and reports its load time and its peak RSS.
_CHILD = r"""
import json, sys, time
import numpy as np
path, how = sys.argv[1], sys.argv[2]
if how == "ours":
    from gnconvert.pickle_reader import read_detectron_pickle
    t = time.perf_counter(); obj = read_detectron_pickle(path); dt = time.perf_counter() - t
    n = len(obj.blobs)
else:
    import pickle
    t = time.perf_counter()
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    dt = time.perf_counter() - t
    n = len(obj["blobs"])
# VmHWM: this process image's own peak RSS (ru_maxrss would carry the parent's over fork/exec)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "peak_rss": hwm, "blobs": n}))
"""


def build_checkpoint(path: Path) -> None:
    from gnconvert.architecture import gn_r50_fpn
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
    from gnconvert.fidelity.seeded import seeded_blobs

    cfg_text = GOLDEN_CFG.read_text() if GOLDEN_CFG.is_file() else None
    write_detectron_pickle(path, seeded_blobs(gn_r50_fpn(), seed=1), cfg_text)


def child(path: Path, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), how], check=True, capture_output=True, text=True,
                         cwd=REPO)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the ~370 MB checkpoint")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        pkl = Path(tmp) / "model_final.pkl"
        t = time.perf_counter()
        build_checkpoint(pkl)
        size = pkl.stat().st_size
        print(f"built {pkl} ({size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")

        runs = {"plain": [], "ours": []}
        for _ in range(args.repeats):
            for how in ("plain", "ours"):
                runs[how].append(child(pkl, how))
        sec = {how: statistics.median(r["seconds"] for r in rs) for how, rs in runs.items()}
        rss = {how: max(r["peak_rss"] for r in rs) for how, rs in runs.items()}
        print(f"read, plain pickle.load(latin1): {sec['plain']:.3f} s (median of {args.repeats}), "
              f"peak RSS {rss['plain'] / 1e6:.0f} MB")
        print(f"read, safe reader:               {sec['ours']:.3f} s (median of {args.repeats}), "
              f"peak RSS {rss['ours'] / 1e6:.0f} MB")
        print(f"time ratio ours / plain:         {sec['ours'] / sec['plain']:.2f}  (target <= 1.5)")
        print(f"peak RSS ours / file size:       {rss['ours'] / size:.2f}  (target <= 2.0)")

        out = Path(tmp) / "converted.safetensors"
        walls = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gnconvert", "convert", str(pkl), "-o", str(out)], check=True,
                           capture_output=True, cwd=REPO)
            walls.append(time.perf_counter() - t)
        print(f"gnconvert convert wall time:     {statistics.median(walls):.2f} s (median of {args.repeats}, "
              f"whole process: start-up, read, md5, mapping, safetensors write of "
              f"{out.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
