"""`--to torchscript`: the scripted archive is `Detector` itself and runs with torch alone.

Expectations come from the eager `Detector`, which test_golden_parity proves
against Detectron's detections.  The archive runs in a fresh interpreter whose
import path holds only torch, torchvision and their declared dependencies:
gnconvert, OpenCV and pycocotools cannot be imported there.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

from gnconvert.architecture import bn_r50_fpn, gn_r50_fpn
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.export import export
from gnconvert.export.common import loaded_network
from gnconvert.export.self_check import reference_detections
from gnconvert.export.torchscript import script
from gnconvert.fidelity.seeded import seeded_blobs
from gnconvert.inference import Detector
from gnconvert.inference.detector import OUTPUTS

GOLDEN_IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]
SUBPROCESS_IMAGES = ["chelsea.png", "tiny_chelsea.png", "wide_synthetic.png"]


# ------------------------------------------------------- one pipeline, two runtimes
@pytest.mark.parametrize("arch_name,images", [("gn", GOLDEN_IMAGES), ("bn", ["grace_hopper.jpg", "chelsea.png"])])
def test_scripted_detector_is_bit_identical_to_eager(golden_dir, arch_name, images):
    """The archive is `Detector` itself, scripted: same outputs to the bit, without autograd."""
    arch = gn_r50_fpn() if arch_name == "gn" else bn_r50_fpn()
    ckpt = ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch)
    network = loaded_network(ckpt)
    scripted = script(ckpt, network)
    eager = Detector(network, arch).eval()
    for name in images:
        image = torch.from_numpy(cv2.imread(str(golden_dir / "images" / name)))
        got = scripted(image)
        assert torch.is_grad_enabled(), "the scripted forward must turn autograd off only inside itself"
        want = eager(image)
        assert set(got) == set(want) == set(OUTPUTS)
        for key in want:
            assert not got[key].requires_grad, key
            assert torch.equal(got[key], want[key]), (name, key)
        predicted = eager.predict(image.numpy(), dense_masks=True)
        assert np.array_equal(predicted.boxes, want["boxes"].numpy()) and np.array_equal(predicted.masks,
                                                                                          want["masks"].numpy())


def test_frozen_bn_archive_matches_detector_despite_saturated_ties(golden_dir, tmp_path):
    """R-50-FPN BN* (AffineChannel, 2fc, bias FPN): its seeded RPN saturates thousands of
    probabilities to exactly 1.0 on chelsea, so only numpy's tie order picks the proposals."""
    arch = bn_r50_fpn()
    ckpt = ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch)
    result = export(ckpt, "torchscript", tmp_path / "bn.pt", image=golden_dir / "images" / "chelsea.png")
    print(result.report.format())
    assert result.report.passed and result.report.detections > 0
    assert result.report.differences["box"] == 0.0 and result.report.differences["score"] == 0.0


# ------------------------------------------------ the archive, outside gnconvert
def _import_closure(roots):
    """Top-level import names of `roots` and their declared dependencies, recursively."""
    seen, todo, tops = set(), list(roots), set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        for f in dist.files or []:
            top = f.parts[0]
            if not top.endswith((".dist-info", ".egg-info", ".pth")) and top not in ("..", "__pycache__", "bin"):
                tops.add(str(dist.locate_file(top)))
    return sorted(tops)


def _torch_only_path(folder):
    """A folder of links to torch, torchvision and their dependencies, nothing else."""
    folder.mkdir()
    for target in _import_closure(["torch", "torchvision"]):
        os.symlink(target, folder / os.path.basename(target))
    return folder


TORCH_ONLY_START = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    for name in ("gnconvert", "cv2", "pycocotools"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(name + " is importable in the torch-only interpreter")
    import torch, torchvision
""")  # a child script's start: torch and torchvision, nothing of ours
CHILD = TORCH_ONLY_START + textwrap.dedent("""
    extra = {"architecture.json": "", "provenance.json": "", "io.json": "", "test_settings.json": ""}
    model = torch.jit.load(sys.argv[2], map_location="cpu", _extra_files=extra)
    images = torch.load(sys.argv[3])
    with torch.no_grad():
        outputs = {name: model(image) for name, image in images.items()}
    torch.save({"outputs": outputs, "extra": extra}, sys.argv[4])
""")


@pytest.fixture(scope="module")
def seeded_gn(golden_dir):
    arch = gn_r50_fpn()
    state = detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict
    cfg_text = (golden_dir / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml").read_text()
    ckpt = ConvertedCheckpoint(state_dict=state, arch=arch, provenance={"model_id": "seeded-R-50-FPN-GN-1"},
                               cfg_text=cfg_text)
    return ckpt, loaded_network(ckpt)


def _assert_same_detections(reference, out, where):
    assert len(out["scores"]) == len(reference), where
    assert np.array_equal(out["classes"], reference.classes), where
    assert np.abs(out["boxes"] - reference.boxes).max(initial=0) <= 1e-3, where
    assert np.abs(out["scores"] - reference.scores).max(initial=0) <= 1e-5, where
    assert np.abs(out["mask_probs"] - reference.mask_probs).max(initial=0) <= 1e-5, where
    dense = reference.dense_masks()
    for ours, ref in zip(out["masks"].astype(bool), dense.astype(bool)):
        union = np.logical_or(ours, ref).sum()
        assert union == 0 or np.logical_and(ours, ref).sum() / union >= 0.99, where


def test_archive_reproduces_detector_in_a_torch_only_interpreter(seeded_gn, golden_dir, tmp_path):
    ckpt, network = seeded_gn
    images = {name: cv2.imread(str(golden_dir / "images" / name)) for name in SUBPROCESS_IMAGES}
    references = {"chelsea.png": reference_detections(network, ckpt.arch, images["chelsea.png"])}

    out_path = tmp_path / "model.pt"
    result = export(ckpt, "torchscript", out_path, reference=references["chelsea.png"],
                    image=golden_dir / "images" / "chelsea.png", network=network)
    print(result.report.format())
    assert result.report.passed and result.paths == [str(out_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    torch.save({k: torch.from_numpy(v) for k, v in images.items()}, tmp_path / "images.pt")
    site = _torch_only_path(tmp_path / "torch_only")
    proc = subprocess.run([sys.executable, "-S", "-E", "-s", "-c", CHILD, str(site), str(out_path),
                           str(tmp_path / "images.pt"), str(tmp_path / "outputs.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = torch.load(tmp_path / "outputs.pt")

    assert json.loads(child["extra"]["architecture.json"]) == json.loads(json.dumps(ckpt.arch.to_dict()))
    assert json.loads(child["extra"]["test_settings.json"]) == dataclasses.asdict(ckpt.arch.test)
    assert json.loads(child["extra"]["provenance.json"])["model_id"] == "seeded-R-50-FPN-GN-1"
    assert set(json.loads(child["extra"]["io.json"])["outputs"]) == {"boxes", "scores", "classes", "mask_probs",
                                                                      "masks"}
    for name, image in images.items():
        if name not in references:
            references[name] = reference_detections(network, ckpt.arch, image)
        out = {k: v.numpy() for k, v in child["outputs"][name].items()}
        assert out["masks"].shape == (len(references[name]),) + image.shape[:2]
        _assert_same_detections(references[name], out, name)
