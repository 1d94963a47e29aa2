#!/usr/bin/env python
"""Inference speed of the converted R-50-FPN GN model vs torchvision's Mask R-CNN.

CPU (default): one 800x1333 network input (a 480x800 image, scaled by 5/3),
same process, same thread count; seconds per image for ours (seeded weights,
so it produces a full 100 detections with masks) and for torchvision's
maskrcnn_resnet50_fpn (random weights, score threshold 0 so that it too keeps
100 detections and pastes 100 masks), their ratio (target <= 1.0), our per-stage
breakdown with Detectron's post-processing (proposals, NMS, decoding, paste, RLE)
summed on its own, and each model's peak RSS (measured in a child process of its own).
On CUDA (--device cuda): images/s at batch 1 and 8, fp32, for both, and
Detectron's published 0.146 + 0.017 s/im for the same model.

    python scripts/bench_inference.py [--runs 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from benchlib import interleaved, machine_line, medians, peak_rss_mb_in_child, timed

DETECTRON_PUBLISHED_S = 0.146 + 0.017  # GN R-50-FPN 2x: inference + mask post-processing, per image (P100)


def make_image() -> np.ndarray:
    rng = np.random.RandomState(0)
    # smooth random texture: something for the RPN to fire on, deterministic
    small = rng.randint(0, 256, (30, 50, 3)).astype(np.uint8)
    import cv2

    return cv2.resize(small, (800, 480), interpolation=cv2.INTER_CUBIC)


POSTPROCESSING = ("proposals", "box_results", "paste", "rle")


def ours(device: str):
    from gnconvert.architecture import gn_r50_fpn
    from gnconvert.checkpoint.name_mapping import detectron_to_torch
    from gnconvert.fidelity.seeded import seeded_blobs
    from gnconvert.inference import Detector
    from gnconvert.model import build_network

    arch = gn_r50_fpn()
    net = build_network(arch)
    net.load_state_dict(detectron_to_torch(seeded_blobs(arch, seed=1), arch).torch_state_dict())
    return Detector(net.eval().to(device), arch).eval()


def theirs(device: str):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_detections_per_img=100, box_score_thresh=0.0,
        min_size=800, max_size=1333,
    )
    return model.eval().to(device)


def to_tv(image: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float().div(255).to(device)


def _peak_rss_child(which: str, device: str, threads: int) -> None:
    """One image through one model, in a child process of its own (peak_rss_mb_in_child)."""
    torch.set_num_threads(threads)
    image = make_image()
    with torch.no_grad():
        if which == "ours":
            ours(device).predict(image)
        else:
            m = theirs(device)
            m([to_tv(image, device)])


def peak_rss_mb(which: str, device: str) -> float:
    return peak_rss_mb_in_child(_peak_rss_child, which, device, torch.get_num_threads())


@torch.no_grad()
def images_per_second(fn, batch, runs, device):
    fn(batch)

    def loop():
        for _ in range(runs):
            fn(batch)

    return runs * len(batch) / timed(loop, device)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    args = ap.parse_args()
    device = args.device
    image = make_image()
    print(machine_line())
    print(f"device {device}, image 480x800 -> input 800x1333")

    det = ours(device)
    tv = theirs(device)
    models = {"ours": det.predict, "torchvision": lambda im: tv([to_tv(im, device)])[0]}
    with torch.no_grad():  # alternating A B A B ... so that load from other processes hits both alike
        runs = interleaved({name: (lambda fn=fn: fn(image)) for name, fn in models.items()}, args.runs, device)
    med, last = medians(runs.wall), runs.last
    t_ours, t_tv = med["ours"], med["torchvision"]
    print(f"ours (Detectron GN R-50-FPN)      : {t_ours:.3f} s/image ({len(last['ours'])} detections)")
    print(f"torchvision maskrcnn_resnet50_fpn : {t_tv:.3f} s/image ({len(last['torchvision']['boxes'])} detections)")
    print(f"ratio ours / torchvision          : {t_ours / t_tv:.2f}  (target <= 1.0)")
    stages = last["ours"].timings
    print("our stages (last run): " + ", ".join(f"{k} {v:.3f}s" for k, v in stages.items()))
    post = sum(stages.get(k, 0.0) for k in POSTPROCESSING)
    print(f"post-processing ({' + '.join(POSTPROCESSING)}): {post:.3f} s = {100 * post / sum(stages.values()):.1f}% "
          "of the image (target < 5%)")
    if not args.no_rss:
        print(f"peak RSS: ours {peak_rss_mb('ours', device):.0f} MB, torchvision {peak_rss_mb('theirs', device):.0f} MB")

    if device == "cuda":
        for bs in (1, 8):
            batch = [image] * bs
            ips_ours = images_per_second(lambda b: det.predict_batch(b), batch, args.runs, device)
            xs = [to_tv(im, device) for im in batch]
            ips_tv = images_per_second(lambda b: tv(xs), batch, args.runs, device)
            print(f"batch {bs}: ours {ips_ours:.2f} im/s, torchvision {ips_tv:.2f} im/s, ratio {ips_ours / ips_tv:.2f}; "
                  f"Detectron published {1 / DETECTRON_PUBLISHED_S:.2f} im/s")


if __name__ == "__main__":
    main()
