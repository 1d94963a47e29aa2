"""`--to torchscript`: the scripted archive reproduces `Detector.predict` with torch alone.

Expectations come from Detectron's golden input blobs (the OpenCV resize), from
OpenCV itself (the mask-paste resize), and from the eager `Detector`, which
test_golden_parity proves against Detectron's detections.  The archive runs in a
fresh interpreter whose import path holds only torch, torchvision and their
declared dependencies: gnconvert, OpenCV and pycocotools cannot be imported there.
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
from gnconvert.converted import ConvertedCheckpoint
from gnconvert.export import export
from gnconvert.export.common import loaded_network
from gnconvert.export.cv2_resize import resize_by_factor, resize_to, round_half_even
from gnconvert.export.scripted_detector import ScriptableDetector
from gnconvert.export.verify import reference_detections
from gnconvert.model import build_network
from gnconvert.name_mapping import detectron_to_torch
from gnconvert.seeded import seeded_blobs

GN_TAG = "R-50-FPN-GN_seed1"
GOLDEN_IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]
SUBPROCESS_IMAGES = ["chelsea.png", "tiny_chelsea.png", "wide_synthetic.png"]


# ----------------------------------------------------------------- the resizes
def test_round_half_even():
    assert [round_half_even(x) for x in (0.5, 1.5, 2.5, -0.5, 2.4999, 7.5, 1202.5)] == [0, 2, 2, 0, 2, 8, 1202]


@pytest.mark.parametrize("image", GOLDEN_IMAGES)
def test_preprocess_reproduces_detectrons_input_blob(golden_dir, image):
    """im_info and the 32x32 input crop Detectron recorded, bit for bit (OpenCV/IPP's resize)."""
    golden = np.load(golden_dir / "detectron" / f"{GN_TAG}__{image.rsplit('.', 1)[0]}.npz")
    module = ScriptableDetector(build_network(gn_r50_fpn()), gn_r50_fpn())
    bgr = cv2.imread(str(golden_dir / "images" / image))
    data, im_info, _ = module.preprocess(torch.from_numpy(bgr))
    assert np.array_equal(im_info.numpy().reshape(-1), golden["im_info"].reshape(-1))
    assert list(data.shape) == golden["data_shape"].tolist()
    crop = data[0, :, :32, :32].numpy()
    assert np.array_equal(crop, golden["data_crop"].reshape(crop.shape))


@pytest.mark.parametrize("image", GOLDEN_IMAGES)
def test_resize_by_factor_matches_opencv_on_golden_images(golden_dir, image):
    """Whole resized golden images, bit for bit, against cv2.resize(fx=s) itself."""
    from gnconvert.inference.preprocess import compute_scale

    bgr = cv2.imread(str(golden_dir / "images" / image))
    im = (bgr.astype(np.float64) - np.array([102.9801, 115.9465, 122.7717])).astype(np.float32)
    s = compute_scale(im.shape[0], im.shape[1], 800, 1333)
    expected = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    ours = resize_by_factor(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))), s).numpy()
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize("height,width", [(480, 640), (640, 480), (600, 600), (375, 500), (427, 640), (47, 61),
                                          (180, 1500), (1600, 1000), (1600, 2000), (31, 45)])
def test_resize_by_factor_matches_opencv_on_common_shapes(height, width):
    """COCO-like shapes at Detectron's scale (both of OpenCV/IPP's coordinate rules, up and down)."""
    from gnconvert.inference.preprocess import compute_scale

    im = (np.random.RandomState(height * width).rand(height, width, 3) * 255 - 120).astype(np.float32)
    s = compute_scale(height, width, 800, 1333)
    expected = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    ours = resize_by_factor(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))), s).numpy()
    assert np.array_equal(ours, expected)


def test_resize_to_matches_opencv_for_mask_paste_sizes():
    """The paste's cv2.resize(30x30 probabilities, (w, h)), every size from 1 to 120, and some larger."""
    rng = np.random.RandomState(0)
    probs = rng.rand(30, 30).astype(np.float32)
    sizes = [(w, h) for w in range(1, 121, 7) for h in range(1, 121, 5)] + [(15, 15), (30, 30), (60, 60), (517, 311)]
    for w, h in sizes:
        expected = cv2.resize(probs, (w, h))
        ours = resize_to(torch.from_numpy(probs)[None], w, h)[0].numpy()
        assert np.array_equal(ours, expected), (w, h)


@pytest.mark.parametrize("levels", [2, 7, 1000, 1 << 20])
def test_scripted_sorts_keep_numpys_tie_order(levels):
    """Against numpy itself (`inference.sorting`: numpy 1.23's classic sorts), on heavily tied scores."""
    from gnconvert.export import scripted_sort
    from gnconvert.inference import sorting

    top_k = torch.jit.script(scripted_sort.top_k_descending)
    nms_order = torch.jit.script(scripted_sort.nms_order)
    rng = np.random.RandomState(levels)
    for n in (3, 16, 17, 300, 4000, 45600):
        x = (rng.randint(0, levels, n) / levels).astype(np.float32)
        t = torch.from_numpy(x)
        for k in sorted({1, 2, n // 3, n - 1, 1000, n, 0}):
            assert np.array_equal(top_k(t, k).numpy(), sorting.top_k_descending(x, k)), (n, k)
        assert np.array_equal(nms_order(t).numpy(), sorting.nms_order(x)), n
        assert np.array_equal(scripted_sort.argsort(-t).numpy(), sorting.argsort(-x)), n


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


CHILD = textwrap.dedent("""
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
