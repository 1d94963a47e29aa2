"""Benchmark `gnconvert verify`: is the model ever waiting, and what do evaluators and ranks cost?

On the synthetic COCO set (golden images with Detectron's detections as ground truth,
tests/coco_fixture.py) replicated to --images images, prints ratios against a reference
measured in the same run:

  1. verify loop images/s  /  the model's bare predict_batch rate on pre-decoded images
     (target >= 0.9: decoding in DataLoader workers and result writing are hidden);
  2. pycocotools evaluation time / faster-coco-eval time on the same results;
  3. images/s with 2 torchrun (gloo) processes / with 1 process (each one thread).

The model is `--model SOURCE` (anything gnconvert.load accepts, e.g. a seeded checkpoint)
or, by default, a stand-in: a randomly initialised torchvision ResNet-18 run on the image
(short side --standin-size) that then returns the golden detections, so the compute per
image and the size of what is written are both real.

    python scripts/bench_verify.py --images 200
    python scripts/bench_verify.py --model path/to/seeded.pkl --device cuda --images 300
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

from benchlib import golden_dir, machine_line, run_timed, timed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from coco_fixture import GoldenPredictor, build_coco  # noqa: E402

from gnconvert.evaluation import VerifyConfig, find_layout, run_verify  # noqa: E402
from gnconvert.evaluation.coco_eval import CocoEvaluator, load_annotations  # noqa: E402
from gnconvert.evaluation.distributed import Workers, init_from_env  # noqa: E402
from gnconvert.evaluation.run import predict_loop  # noqa: E402
from gnconvert.results.run_folder import RunFolder  # noqa: E402

GOLDEN = golden_dir()


class StandIn:
    """A ResNet-18 forward per image (the cost), then the golden detections (the output)."""

    def __init__(self, size: int, device: str = "cpu"):
        import torchvision

        torch.manual_seed(0)
        self.net = torchvision.models.resnet18(weights=None).eval().to(device)
        self.size, self.device = size, device
        self.golden = GoldenPredictor(GOLDEN)

    @torch.no_grad()
    def predict_batch(self, images):
        for im in images:
            h, w = im.shape[:2]
            s = self.size / min(h, w)
            x = cv2.resize(im, None, fx=s, fy=s).astype(np.float32)
            self.net(torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device))
        return self.golden.predict_batch(images)


def make_predictor(args):
    if args.model == "standin":
        return StandIn(args.standin_size, args.device)
    from gnconvert import load

    return load(args.model, args.device)


def decoded_images(layout, n: int):
    ann = load_annotations(layout.annotations)
    return [cv2.imread(str(layout.images / im["file_name"]))
            for im in sorted(ann["images"], key=lambda im: im["id"])[:n]]


def bare_rate(predictor, images, batch_size: int, device: str) -> float:
    """Images/s of predict_batch alone, on images decoded beforehand."""
    def run():
        for i in range(0, len(images), batch_size):
            predictor.predict_batch(images[i:i + batch_size])

    return len(images) / timed(run, device)[1]


def evaluate(ann, results, ids, evaluator: str) -> None:
    """bbox and segm evaluation of the same results with one evaluator."""
    coco = CocoEvaluator(ann, evaluator)
    for t in ("bbox", "segm"):
        coco.evaluate(results[t], t, ids)


def loop_rate(predictor, layout, n: int, batch_size: int, workers: int, folder: Path) -> tuple[float, float]:
    """Images/s of the verify loop (decoding workers, predict_batch, results entries, partial saves),
    timed from the first batch, and the share of that time spent inside predict_batch."""
    ann = load_annotations(layout.annotations)
    items = [(int(im["id"]), layout.images / im["file_name"])
             for im in sorted(ann["images"], key=lambda im: im["id"])[:n]]
    store = RunFolder(folder, "verify", {"source": "bench"}, exclusive=False)
    store.claim(resume=False, warn=lambda s: None)
    _, seconds, predict_s, _ = predict_loop(predictor, items, Workers(), store, batch_size, workers, False, print)
    return n / seconds, predict_s / seconds


def worker(args) -> None:
    """One verify run (under torchrun when WORLD_SIZE is set); prints nothing but the report."""
    dist = init_from_env(args.device)
    try:
        try:
            import faster_coco_eval  # noqa: F401  only the loop is timed here; evaluate quickly
            evaluator = "faster-coco-eval"
        except ImportError:
            evaluator = "pycocotools"
        config = VerifyConfig(find_layout(coco_root=args.coco_root), args.output, source="bench",
                              batch_size=args.batch_size, workers=args.workers, progress=False, evaluator=evaluator)
        run_verify(make_predictor(args), config, dist=dist, echo=lambda s: None)
    finally:
        dist.close()


def run_ranks(args, nproc: int, out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [str(Path(__file__).resolve()), "--worker", "--coco-root", str(args.coco_root), "--output", str(out),
            "--model", args.model, "--device", args.device, "--standin-size", str(args.standin_size),
            "--workers", "1", "--batch-size", str(args.batch_size)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + base
           if nproc > 1 else [sys.executable] + base)
    run_timed(cmd, env)
    return json.loads((out / "report.json").read_text())["timing"]["images_per_second"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--model", default="standin")
    p.add_argument("--device", default="cpu")
    p.add_argument("--standin-size", type=int, default=320)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the in-process runs (1: OpenMP threads on a busy 2-core machine stall)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--coco-root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    print(machine_line())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        copies = max(1, -(-args.images // 5))
        build_coco(tmp / "coco", GOLDEN, layout="2017", copies=copies)
        args.coco_root = tmp / "coco"
        layout = find_layout(coco_root=args.coco_root)
        n = copies * 5
        print(f"dataset: {n} images (golden images x{copies}), model: {args.model} on {args.device}, "
              f"{args.workers} decode workers")

        predictor = make_predictor(args)
        images = decoded_images(layout, n)
        predictor.predict_batch(images[:2])  # warm-up
        bare, loop, busy = [], [], []
        for r in range(args.rounds):  # interleaved, best of rounds: other load on the machine hits both alike
            bare.append(bare_rate(predictor, images, args.batch_size, args.device))
            rate, fraction = loop_rate(predictor, layout, n, args.batch_size, args.workers, tmp / "partial")
            loop.append(rate)
            busy.append(fraction)
            print(f"   round {r + 1}: bare {bare[-1]:.2f} img/s, verify loop {loop[-1]:.2f} img/s, "
                  f"model busy {100 * fraction:.1f}% of the loop")
        print(f"1. bare predict_batch: {max(bare):.2f} img/s; verify loop: {max(loop):.2f} img/s; "
              f"ratio {max(loop) / max(bare):.3f} (target >= 0.9)")
        # measured inside one run, so immune to load from other processes: the share of the loop's
        # wall time spent in predict_batch (1.0 = the model never waits for data or bookkeeping)
        print(f"1b. model busy fraction of the verify loop: {max(busy):.3f} (target >= 0.9)")
        report = run_verify(predictor, VerifyConfig(layout, tmp / "out", source="bench", batch_size=args.batch_size,
                                                    workers=args.workers, progress=False), echo=lambda s: None)

        results = {t: json.loads(Path(report["files"][t]).read_text()) for t in ("bbox", "segm")}
        ann = load_annotations(layout.annotations)
        ids = [im["id"] for im in ann["images"]]
        times = {}
        for ev in ("pycocotools", "faster-coco-eval"):
            try:
                times[ev] = timed(partial(evaluate, ann, results, ids, ev))[1]
            except Exception as e:  # faster-coco-eval is optional
                print(f"   {ev}: not measured ({e})")
        if len(times) == 2:
            print(f"2. evaluation (bbox+segm): pycocotools {times['pycocotools']:.2f} s, faster-coco-eval "
                  f"{times['faster-coco-eval']:.2f} s; ratio {times['pycocotools'] / times['faster-coco-eval']:.2f}x")

        if not args.skip_scaling:
            one, two = [], []
            for r in range(args.rounds):
                one.append(run_ranks(args, 1, tmp / f"r1_{r}"))
                two.append(run_ranks(args, 2, tmp / f"r2_{r}"))
            print(f"3. one thread per process: 1 process {max(one):.2f} img/s, 2 gloo processes {max(two):.2f} img/s;"
                  f" scaling {max(two) / max(one):.2f}x (ideal 2.0 with 2 free cores)")


if __name__ == "__main__":
    main()
