"""Seconds per image of the exported TorchScript pipeline vs the eager `Detector`, and export time.

    python scripts/bench_export.py [--images a.jpg b.png] [--repeats 3] [--device cpu|cuda]

Both run the same seeded full-size R-50-FPN GN weights on the same images in this
process, alternating (eager, scripted) per repeat so machine load hits both alike.
Printed per device: median wall seconds per image and CPU (process) seconds per
image for each, their ratios (scripted / eager; < 1 means the archive is faster),
whether the two gave the same detections, then the export wall time (script +
save), the archive's load time and its size, and the peak RSS of the README's
snippet (`torch.jit.load` + one call, nothing else) run in a fresh interpreter.
On CUDA the eager path may use the fused Triton GroupNorm while the archive uses
F.group_norm.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gnconvert.architecture import gn_r50_fpn  # noqa: E402
from gnconvert.checkpoint.converted import ConvertedCheckpoint  # noqa: E402
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network  # noqa: E402
from gnconvert.export.torchscript import extra_files, script  # noqa: E402
from gnconvert.inference import Detector  # noqa: E402
from gnconvert.checkpoint.name_mapping import detectron_to_torch  # noqa: E402
from gnconvert.fidelity.seeded import seeded_blobs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


SNIPPET = """
import sys, cv2, torch, torchvision
model = torch.jit.load(sys.argv[1])
out = model(torch.from_numpy(cv2.imread(sys.argv[2])))
boxes = out["boxes"].numpy()   # the outputs need no detach(): the archive runs without autograd
with open("/proc/self/status") as f:
    print([line.split()[1] for line in f if line.startswith("VmHWM:")][0])
"""


def snippet_peak_mb(archive: str, image: str) -> float:
    """Peak RSS of the README's TorchScript snippet in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", SNIPPET, archive, image], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=[str(BUNDLED_IMAGE)])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()

    arch = gn_r50_fpn()
    ckpt = ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch,
                               provenance={"model_id": "seeded-R-50-FPN-GN-1"})
    network = loaded_network(ckpt)
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        t0 = time.perf_counter()
        torch.jit.save(script(ckpt, network), path, _extra_files=extra_files(ckpt))
        export_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        archive = torch.jit.load(path, map_location="cpu")
        load_wall = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        peak_mb = snippet_peak_mb(path, args.images[0])

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA device here: CPU only")
    images = [cv2.imread(p) for p in args.images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, images: "
          f"{', '.join(f'{Path(p).name} {im.shape[1]}x{im.shape[0]}' for p, im in zip(args.images, images))}")
    for name in devices:
        device = torch.device(name)
        detector = Detector(network.to(device), arch)
        module = archive.to(device)
        tensors = [torch.from_numpy(im).to(device) for im in images]
        for im, t in zip(images, tensors):  # warm-up (and the profiling executor's first runs)
            detector.predict(im)
            module(t)
            module(t)
        times = {"eager": ([], []), "torchscript": ([], [])}
        same = True
        for _ in range(args.repeats):
            for im, t in zip(images, tensors):
                ref, wall, cpu = _timed(lambda: detector.predict(im), device)
                times["eager"][0].append(wall)
                times["eager"][1].append(cpu)
                out, wall, cpu = _timed(lambda: module(t), device)
                times["torchscript"][0].append(wall)
                times["torchscript"][1].append(cpu)
                same &= len(ref) == out["scores"].shape[0] and np.array_equal(ref.classes, out["classes"].cpu().numpy())
        med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}
        print(f"[{name}] per image, median of {args.repeats * len(images)}:")
        for k, (w, c) in med.items():
            print(f"  {k:12s} wall {w:7.3f} s   cpu {c:7.3f} s")
        print(f"  ratio torchscript/eager: wall {med['torchscript'][0] / med['eager'][0]:.3f}, "
              f"cpu {med['torchscript'][1] / med['eager'][1]:.3f}; same detections: {same}")
        network.to("cpu")
    print(f"export (script + save) wall {export_wall:.2f} s, load {load_wall:.2f} s, archive {size_mb:.1f} MiB")
    print(f"README snippet (load + one image, fresh interpreter): peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
