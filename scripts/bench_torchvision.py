#!/usr/bin/env python
"""What the torchvision Mask R-CNN (`gnconvert export --to torchvision`) keeps of Detectron's answer.

For each golden run (seeded checkpoint, Detectron's own outputs): the torchvision model's free run
matched to Detectron's detections (strict: the golden README's criteria; loose: IoU >= 0.9,
|dscore| <= 0.05) and AP with Detectron's detections as the ground truth; then each stage on
Detectron's own input (FPN on its input blob, box head and decoding on its 1000 RoIs, masks on its
final boxes), see `gnconvert.fidelity.torchvision_agreement`.  Our own Detector is measured the same
way in the same run, as the reference.  Also speed: seconds per image, torchvision vs ours.

    python scripts/bench_torchvision.py [--tags R-50-FPN-GN_seed1,R-101-FPN-GN_seed1,R-50-FPN-BN_seed1]
        [--images grace_hopper.jpg,...] [--threads 2] [--json FILE] [--golden ../shared/golden]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from benchlib import golden_dir, machine, machine_line, seeded_checkpoint

TAGS = ["R-50-FPN-GN_seed1", "R-101-FPN-GN_seed1", "R-50-FPN-BN_seed1", "R-101-FPN-BN_seed1"]


def measure(tag: str, folder: Path, images):
    from gnconvert.api import build_model
    from gnconvert.fidelity import golden_format, torchvision_agreement
    from gnconvert.fidelity.mode_fidelity import measure as measure_ours

    available = list(golden_format.records(folder, tag))
    names = [i for i in (images or available) if i in available]
    ckpt = seeded_checkpoint(golden_format.architecture_name(tag), golden_format.seed_of(tag))
    theirs = torchvision_agreement.measure(ckpt, folder, tag, names)
    ours = measure_ours(build_model(ckpt, "cpu"), folder, tag, names, mode="gnconvert fp32 (exact)")
    return theirs, ours


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", default=",".join(TAGS))
    parser.add_argument("--images", default="", help="comma-separated golden image names (default: all of a run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--golden", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.golden or golden_dir()
    print(machine_line())
    results = []
    for tag in args.tags.split(","):
        theirs, ours = measure(tag, folder, [i for i in args.images.split(",") if i])
        print(theirs.format())
        print(f"  reference, same run: {ours.format()}")
        t_tv = sum(i.seconds for i in theirs.free.images)
        t_ours = sum(i.seconds for i in ours.images)
        print(f"  seconds per image: torchvision {t_tv / len(ours.images):.2f}, gnconvert {t_ours / len(ours.images):.2f} "
              f"(torchvision / gnconvert {t_tv / t_ours:.2f}x)", flush=True)
        results.append({"torchvision": theirs.to_dict(), "gnconvert": ours.to_dict()})
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
