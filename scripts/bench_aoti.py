#!/usr/bin/env python
"""Eager `Detector` vs a `gnconvert export --to aoti` package: s/image and bit identity.

    python scripts/bench_aoti.py model_aoti.pt2          # builds the package first if the file is absent (minutes)
    python scripts/bench_aoti.py bn_aoti.pt2 --arch bn   # the BN* baseline's package and golden images

The package is the seeded R-50-FPN GN (or BN*) checkpoint's exported program, compiled as
`gnconvert export --to aoti` compiles it (gnconvert.export.aoti, inductor lite mode).

Both run in this process (2 threads, CPU), interleaved (E A E A E A), median of 3, on an
800x1216 and a 480x640 image; then every golden R-50-FPN GN image is compared bit for bit, and
three bad inputs show the package's error's first line.  Ratios: eager's s/image over the package's.
"""
import argparse
import os
import time

import cv2
import torch
import torchvision  # noqa: F401  (registers torchvision::roi_align for the package)
from bench_export import image_of_size
from benchlib import golden_dir, seeded_checkpoint

from gnconvert.export import exported_program
from gnconvert.export.common import loaded_network

ARCHS = {"gn": ("e2e_mask_rcnn_R-50-FPN_2x_gn",
                ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]),
         "bn": ("e2e_mask_rcnn_R-50-FPN_2x", ["grace_hopper.jpg", "chelsea.png", "wide_synthetic.png"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="gn")
    args = ap.parse_args()
    torch.set_num_threads(2)
    arch_name, golden_images = ARCHS[args.arch]
    ckpt = seeded_checkpoint(arch_name)
    eager = exported_program.detector(ckpt, loaded_network(ckpt), "cpu")
    if not os.path.exists(args.package):
        from gnconvert.export.aoti import compile_package

        t0 = time.perf_counter()
        compile_package(exported_program.trace(ckpt), args.package)
        print(f"trace + compile: {time.perf_counter() - t0:.0f} s, {os.path.getsize(args.package) / 2**20:.0f} MiB")
    aoti = torch._inductor.aoti_load_package(args.package)
    for h, w in [(800, 1216), (480, 640)]:
        x = torch.from_numpy(image_of_size(h, w))
        with torch.no_grad():
            a, b = eager(x), aoti(x)
            times: dict = {"eager": [], "aoti": []}
            for _ in range(3):
                for name, run in (("eager", eager), ("aoti", aoti)):
                    t0 = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t0)
        med = {k: sorted(v)[1] for k, v in times.items()}
        print(f"{h}x{w}: eager {med['eager']:.2f} s/image, aoti {med['aoti']:.2f} s/image, "
              f"ratio {med['eager'] / med['aoti']:.2f}x, bit-identical {all(torch.equal(a[k], b[k]) for k in a)}")
    for name in golden_images:
        x = torch.from_numpy(cv2.imread(str(golden_dir() / "images" / name)))
        with torch.no_grad():
            a, b = eager(x), aoti(x)
        print(name, tuple(x.shape), "bit-identical" if all(torch.equal(a[k], b[k]) for k in a) else "DIFFERS")
    for bad in [torch.zeros((64, 80, 3)), torch.zeros((64, 80), dtype=torch.uint8),
                torch.zeros((64, 80, 4), dtype=torch.uint8)]:
        try:
            aoti(bad)
            print("bad input ran")
        except RuntimeError as e:
            print("bad input:", str(e).splitlines()[0])


if __name__ == "__main__":
    main()
