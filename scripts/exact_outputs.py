#!/usr/bin/env python
"""Fingerprints of the exact mode's outputs on every golden case, to prove a change left them bit for bit.

    python scripts/exact_outputs.py --save /tmp/before        # at the commit before a change
    python scripts/exact_outputs.py --compare /tmp/before     # after it: identical, or the first difference

For each golden (architecture, image) pair the seeded checkpoint runs through `Detector.forward`
(the TorchScript path: boxes, scores, classes, mask probabilities, dense masks) and `predict`
(what users call: Detections with RLE masks); every output array is recorded by its SHA-256
(and the boxes and scores themselves, to show a difference).  Same machine and environment for
both runs: float32 results depend on the CPU's instruction set (see ATEN_CPU_CAPABILITY).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from benchlib import golden_dir, machine_line, seeded_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from golden_cases import GOLDEN_CASES  # noqa: E402


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()[:24]


def fingerprints(cases) -> dict:
    from gnconvert.api import build_model
    from gnconvert.fidelity import golden_format

    out: dict = {}
    for tag in dict.fromkeys(t for t, _ in cases):
        model = build_model(seeded_checkpoint(golden_format.architecture_name(tag), golden_format.seed_of(tag)), "cpu")
        for _, image in [c for c in cases if c[0] == tag]:
            path = golden_dir() / "images" / image
            forward = model(torch.from_numpy(cv2.imread(str(path))))
            dets = model.predict(path)
            rle = json.dumps([dict(m, counts=str(m["counts"])) for m in dets.masks_rle], sort_keys=True)
            entry = {f"forward.{k}": _digest(v.numpy()) for k, v in forward.items()}
            entry.update({"predict.boxes": _digest(dets.boxes), "predict.scores": _digest(dets.scores),
                          "predict.classes": _digest(dets.classes), "predict.mask_probs": _digest(dets.mask_probs),
                          "predict.masks_rle": hashlib.sha256(rle.encode()).hexdigest()[:24],
                          "values.boxes": dets.boxes.tolist(), "values.scores": dets.scores.tolist()})
            out[f"{tag}/{image}"] = entry
            print(f"{tag}/{image}: {len(dets)} detections", flush=True)
        del model
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="folder to write fingerprints.json into")
    group.add_argument("--compare", type=Path, help="folder holding an earlier run's fingerprints.json")
    ap.add_argument("--cases", nargs="*", help="TAG/IMAGE pairs (default: every golden case)")
    args = ap.parse_args()
    cases = [tuple(c.split("/", 1)) for c in args.cases] if args.cases else GOLDEN_CASES
    print(machine_line(), f"; ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    now = fingerprints(cases)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "fingerprints.json").write_text(json.dumps(now, indent=1))
        print(f"wrote {args.save / 'fingerprints.json'} ({len(now)} cases)")
        return 0
    before = json.loads((args.compare / "fingerprints.json").read_text())
    bad = 0
    for case, entry in now.items():
        old = before.get(case)
        if old is None:
            print(f"{case}: not in the earlier run")
            bad += 1
            continue
        diff = [k for k in entry if not k.startswith("values.") and entry[k] != old.get(k)]
        if diff:
            bad += 1
            print(f"{case}: DIFFERENT in {', '.join(diff)}")
        else:
            print(f"{case}: identical ({len(entry) - 2} outputs)")
    print(f"{len(now) - bad} of {len(now)} cases bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
