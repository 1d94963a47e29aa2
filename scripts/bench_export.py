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
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from benchlib import interleaved, machine_line, peak_rss_mb_in_child, timed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gnconvert.architecture import gn_r50_fpn  # noqa: E402
from gnconvert.checkpoint.converted import ConvertedCheckpoint  # noqa: E402
from gnconvert.checkpoint.name_mapping import detectron_to_torch  # noqa: E402
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network  # noqa: E402
from gnconvert.export.torchscript import extra_files, script  # noqa: E402
from gnconvert.fidelity.seeded import seeded_blobs  # noqa: E402
from gnconvert.inference import Detector  # noqa: E402

KINDS = ("eager", "torchscript")


def readme_snippet(archive: str, image: str) -> None:
    """The README's TorchScript snippet: load the archive, run it on one image (in a fresh interpreter)."""
    import cv2
    import torch
    import torchvision  # noqa: F401  as the README's snippet does: it registers the detection ops

    model = torch.jit.load(archive)
    out = model(torch.from_numpy(cv2.imread(image)))
    out["boxes"].numpy()  # the outputs need no detach(): the archive runs without autograd


def pooled(per_key: dict, kind: str) -> list:
    """All the figures of one kind, over the images (interleaved's keys are (kind, image index))."""
    return [x for (k, _), xs in per_key.items() if k == kind for x in xs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=[str(BUNDLED_IMAGE)])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    print(machine_line())

    arch = gn_r50_fpn()
    ckpt = ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch,
                               provenance={"model_id": "seeded-R-50-FPN-GN-1"})
    network = loaded_network(ckpt)
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        _, export_wall, _ = timed(lambda: torch.jit.save(script(ckpt, network), path, _extra_files=extra_files(ckpt)))
        archive, load_wall, _ = timed(lambda: torch.jit.load(path, map_location="cpu"))
        size_mb = os.path.getsize(path) / 2**20
        peak_mb = peak_rss_mb_in_child(readme_snippet, path, args.images[0])

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA device here: CPU only")
    images = [cv2.imread(p) for p in args.images]
    print("images: "
          f"{', '.join(f'{Path(p).name} {im.shape[1]}x{im.shape[0]}' for p, im in zip(args.images, images))}")
    for name in devices:
        device = torch.device(name)
        detector = Detector(network.to(device), arch)
        module = archive.to(device)
        tensors = [torch.from_numpy(im).to(device) for im in images]
        fns = {}
        for i, (im, t) in enumerate(zip(images, tensors)):  # per repeat: eager, scripted, image after image
            fns["eager", i] = lambda im=im: detector.predict(im)
            fns["torchscript", i] = lambda t=t: module(t)
        # two warm-up rounds: the profiling executor optimises the archive on its second call
        runs = interleaved(fns, args.repeats, device, warmup=2)
        same = all(len(runs.last["eager", i]) == runs.last["torchscript", i]["scores"].shape[0]
                   and np.array_equal(runs.last["eager", i].classes, runs.last["torchscript", i]["classes"].cpu().numpy())
                   for i in range(len(images)))
        med = {k: (statistics.median(pooled(runs.wall, k)), statistics.median(pooled(runs.cpu, k))) for k in KINDS}
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
