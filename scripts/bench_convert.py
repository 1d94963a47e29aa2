"""Benchmark: reading and converting a full-size Detectron checkpoint.

Builds a seeded R-50-FPN GN `model_final.pkl` (~370 MB, written the way Python 2
Detectron wrote it), then, in one run:
- reads it with our safe reader and with plain `pickle.load(f, encoding='latin1')`
  (the unsafe reference), each in a fresh interpreter, alternating, several times;
  prints the time ratio (target <= 1.5) and each one's peak RSS;
- times the whole `gnconvert convert` (a subprocess, as a user runs it);
- prints the reader's peak RSS over the file size (target <= 2).

    python scripts/bench_convert.py [--repeats 3] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import golden_dir, high_water_mb, in_child, machine_line, run_timed, timed

REPO = Path(__file__).resolve().parents[1]
GOLDEN_CFG = golden_dir() / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"


def read_once(path: str, how: str) -> dict:
    """Run in a fresh child: load the file once; its load time, its peak RSS (bytes) and its blob count."""
    import numpy  # noqa: F401  imported before the clock starts, in both

    if how == "ours":
        from gnconvert.checkpoint.pickle_reader import read_detectron_pickle

        obj, dt, _ = timed(lambda: read_detectron_pickle(path))
        n = len(obj.blobs)
    else:
        import pickle

        def plain():
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")

        obj, dt, _ = timed(plain)
        n = len(obj["blobs"])
    return {"seconds": dt, "peak_rss": high_water_mb() * 2**20, "blobs": n}


def build_checkpoint(path: Path) -> None:
    from gnconvert.architecture import gn_r50_fpn
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
    from gnconvert.fidelity.seeded import seeded_blobs

    cfg_text = GOLDEN_CFG.read_text() if GOLDEN_CFG.is_file() else None
    write_detectron_pickle(path, seeded_blobs(gn_r50_fpn(), seed=1), cfg_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the ~370 MB checkpoint")
    args = parser.parse_args()
    print(machine_line())

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        pkl = Path(tmp) / "model_final.pkl"
        _, seconds, _ = timed(lambda: build_checkpoint(pkl))
        size = pkl.stat().st_size
        print(f"built {pkl} ({size / 1e6:.1f} MB) in {seconds:.1f} s")

        runs = {"plain": [], "ours": []}
        for _ in range(args.repeats):
            for how in ("plain", "ours"):
                runs[how].append(in_child(read_once, str(pkl), how))
        sec = {how: statistics.median(r["seconds"] for r in rs) for how, rs in runs.items()}
        rss = {how: max(r["peak_rss"] for r in rs) for how, rs in runs.items()}
        print(f"read, plain pickle.load(latin1): {sec['plain']:.3f} s (median of {args.repeats}), "
              f"peak RSS {rss['plain'] / 1e6:.0f} MB")
        print(f"read, safe reader:               {sec['ours']:.3f} s (median of {args.repeats}), "
              f"peak RSS {rss['ours'] / 1e6:.0f} MB")
        print(f"time ratio ours / plain:         {sec['ours'] / sec['plain']:.2f}  (target <= 1.5)")
        print(f"peak RSS ours / file size:       {rss['ours'] / size:.2f}  (target <= 2.0)")

        out = Path(tmp) / "converted.safetensors"
        walls = [run_timed([sys.executable, "-m", "gnconvert", "convert", str(pkl), "-o", str(out)], cwd=REPO)[0]
                 for _ in range(args.repeats)]
        print(f"gnconvert convert wall time:     {statistics.median(walls):.2f} s (median of {args.repeats}, "
              f"whole process: start-up, read, md5, mapping, safetensors write of "
              f"{out.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
