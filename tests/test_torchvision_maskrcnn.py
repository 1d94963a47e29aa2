"""The torchvision Mask R-CNN: export, the README's torch + torchvision-only builder, agreement with
Detectron, `verify --backend torchvision`, and fine-tuning (losses, the GroupNorm kernel, the example).

Expectations: Detectron's golden outputs, our own Detector where torchvision computes the same layers,
and torchvision's training API (its five losses); the example's loss must go down.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gnconvert.architecture import REFERENCE_ARCHITECTURES
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.fidelity.seeded import seeded_blobs

REPO = Path(__file__).resolve().parents[1]
GN = "e2e_mask_rcnn_R-50-FPN_2x_gn"
TAG = "R-50-FPN-GN_seed1"
BUILDER = "gnconvert/export/torchvision_builder.py"
EXAMPLE = REPO / "examples" / "finetune_torchvision.py"
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
# run with gnconvert unimportable: what a user without gnconvert has
NO_GNCONVERT = "import sys; sys.modules['gnconvert'] = None\n"


def _ckpt(name: str) -> ConvertedCheckpoint:
    arch = REFERENCE_ARCHITECTURES[name]
    return ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch)


@pytest.fixture(scope="module")
def gn_ckpt():
    return _ckpt(GN)


@pytest.fixture(scope="module")
def exported(gn_ckpt, tmp_path_factory):
    """`--to torchvision` of the seeded R-50-FPN GN checkpoint, verified as the CLI does: (result, path)."""
    from gnconvert.export import export

    out = tmp_path_factory.mktemp("tv") / "tv_maskrcnn.pth"
    return export(gn_ckpt, "torchvision", out), out


def _builder_block(text: str) -> str:
    m = re.search(r"^# README builder begins\n.*?^# README builder ends$", text, re.S | re.M)
    assert m, "no README builder block"
    return m.group(0)


def _readme_snippet() -> str:
    """The README's Python block that holds the builder, as a user copies it."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    found = [b for b in blocks if "# README builder begins" in b]
    assert len(found) == 1
    return found[0]


def test_export_is_verified_and_reports_the_agreement(exported):
    result, out = exported
    report = result.report.format()
    print(report)
    assert result.report.passed and result.paths == [str(out), str(out.with_suffix(".json"))]
    for part in ("FPN", "RPN head", "box head", "mask head"):
        assert result.report.differences[part] <= 1e-4  # the same layers, float32 noise
    assert re.search(r"reproduces \d+/100 of gnconvert's \(Detectron's\) detections strictly .* \d+/100 loosely",
                     report)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["builder_kwargs"] == {"depth": 50, "gn": True} and sidecar["build"] == "detectron_maskrcnn(depth=50, gn=True)"
    assert sidecar["categories"][18] == "dog" and len(sidecar["categories"]) == 91


def test_builder_is_one_text_in_readme_example_and_package():
    package = _builder_block((REPO / BUILDER).read_text())
    assert _builder_block(_readme_snippet()) == package
    assert _builder_block(EXAMPLE.read_text()) == package


def test_readme_snippet_loads_strictly_without_gnconvert(exported, golden_dir, tmp_path):
    """The README's block itself, run where `import gnconvert` fails, on the file the export wrote; its
    detections are the ones gnconvert's own torchvision model gives."""
    from gnconvert.export.torchvision_adapter import TorchvisionPredictor

    _, out = exported
    shutil.copy(out, tmp_path / "tv_maskrcnn.pth")
    bgr = cv2.imread(str(golden_dir / "images" / "tiny_chelsea.png"))
    cv2.imwrite(str(tmp_path / "image.jpg"), bgr)
    script = (NO_GNCONVERT + _readme_snippet()
              + "\ntry:\n    import gnconvert\n    raise SystemExit('gnconvert was importable')\nexcept ImportError:\n    pass\n"
              + "torch.save({k: v for k, v in out.items()}, 'out.pt')\n")
    (tmp_path / "snippet.py").write_text(script)
    run = subprocess.run([sys.executable, "-I", "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    rgb = torchvision_image(tmp_path / "image.jpg")
    tv = _reference_model(out)
    with torch.no_grad():
        ours = tv([rgb])[0]
    assert set(theirs) == {"boxes", "labels", "scores", "masks"} and len(theirs["boxes"]) > 0
    for k in ("boxes", "labels", "scores"):
        assert torch.equal(theirs[k], ours[k]), k
    assert TorchvisionPredictor(tv).predict(bgr).classes.min() >= 1


def torchvision_image(path) -> torch.Tensor:
    """The README's way of reading an image."""
    import PIL.Image
    from torchvision.transforms.functional import to_tensor

    return to_tensor(PIL.Image.open(path).convert("RGB"))


def _reference_model(path):
    """gnconvert's side: the package's builder, loaded strictly from the exported file."""
    from gnconvert.export.torchvision_builder import detectron_maskrcnn

    model = detectron_maskrcnn(depth=50)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


def test_to_torchvision_is_the_exported_model(exported, gn_ckpt):
    import gnconvert

    _, out = exported
    ours = gnconvert.to_torchvision(gn_ckpt).state_dict()
    written = torch.load(out, weights_only=True)
    assert set(ours) == set(written) and all(torch.equal(ours[k], written[k]) for k in ours)


@pytest.mark.parametrize("name,tag,image", [(GN, TAG, "tiny_chelsea.png"),
                                            ("e2e_mask_rcnn_R-50-FPN_2x", "R-50-FPN-BN_seed1", "wide_synthetic.png")])
def test_each_stage_on_detectrons_inputs(golden_dir, gn_ckpt, name, tag, image):
    """torchvision's network computes Detectron's FPN on Detectron's input blob (GN and BN*: conv1's channels,
    the frozen BN with eps 0 and the moved stride); the later stages' figures are measured, in range."""
    from gnconvert.export.torchvision_api import to_torchvision
    from gnconvert.fidelity import torchvision_agreement
    from gnconvert.model import build_network

    ckpt = gn_ckpt if name == GN else _ckpt(name)
    network = build_network(ckpt.arch)
    network.load_state_dict(ckpt.torch_state_dict())
    s = torchvision_agreement.stages(to_torchvision(ckpt), network.eval(), ckpt.arch, golden_dir, tag, image)
    print(s)
    assert s.fpn_rel_error < 1e-4 and s.rpn_rel_error < 1e-4  # Detectron's golden FPN crops; our RPN head
    assert 0 <= s.cls_prob_max_diff <= 1 and 0 <= s.box_iou_min <= s.box_iou_median <= 1
    assert s.mask_iou_min is not None and 0 <= s.mask_iou_min <= s.mask_iou_median <= 1


def test_free_run_measurement_is_produced_and_calibrated(golden_dir, gn_ckpt):
    """The agreement report for the torchvision model, and the same measurement of our own Detector,
    which must meet the golden README's criteria on the selftest's image (so the measurement can fail)."""
    from gnconvert.api import build_model
    from gnconvert.export.torchvision_adapter import TorchvisionPredictor
    from gnconvert.export.torchvision_api import to_torchvision
    from gnconvert.fidelity import torchvision_agreement

    ours = torchvision_agreement.free_run(build_model(gn_ckpt, "cpu"), golden_dir, TAG, ["chelsea.png"], "gnconvert")
    assert ours.strict_share >= 0.99 and ours.box_ap > 95
    theirs = torchvision_agreement.free_run(TorchvisionPredictor(to_torchvision(gn_ckpt)), golden_dir, TAG,
                                            ["chelsea.png"])
    text = torchvision_agreement.TorchvisionAgreement(TAG, theirs).format()
    print(text)
    (image,) = theirs.images
    assert image.reference == 100 and 0 <= image.strict <= image.loose <= image.reference and image.ours > 0
    assert 0 <= theirs.box_ap <= 100 and 0 <= theirs.mask_ap <= 100
    assert "matched strictly" in text and "free run chelsea.png" in text


def _small_batch():
    h, w = 160, 208
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 30:120, 40:150] = 1
    masks[1, 60:150, 150:200] = 1
    boxes = torch.tensor([[40.0, 30.0, 150.0, 120.0], [150.0, 60.0, 200.0, 150.0]])
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g), torch.rand(3, h, w, generator=g)]
    targets = [{"boxes": boxes, "labels": torch.tensor([18, 1]), "masks": masks} for _ in images]  # dog, person
    return images, targets


def test_train_mode_gives_the_five_losses_and_a_step_changes_the_weights(exported):
    from gnconvert.export.torchvision_builder import detectron_maskrcnn

    _, out = exported
    torch.manual_seed(0)
    model = detectron_maskrcnn(min_size=160, max_size=208, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                               box_batch_size_per_image=64)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model.train()
    images, targets = _small_batch()
    losses = model(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.body.conv1.weight" in frozen and "backbone.body.layer1.0.conv1.weight" in frozen
    assert "backbone.body.layer2.0.conv1.weight" in trained and "roi_heads.box_head.0.1.weight" in trained
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    changed = [n for n, v in trained.items() if not torch.equal(after[n], v)]
    assert "roi_heads.mask_predictor.conv5_mask.weight" in changed and "backbone.fpn.layer_blocks.0.0.weight" in changed
    assert all(torch.equal(after[n], v) for n, v in frozen.items())


def test_group_norm_kernel_swap_keeps_weights_and_outputs(exported, monkeypatch):
    """The swap replaces every nn.GroupNorm with the kernel's module, same Parameters and keys; on the CPU
    the kernel runs in Triton's interpreter (forced on), forward and backward match nn.GroupNorm's."""
    pytest.importorskip("triton")
    import copy

    import gnconvert
    import gnconvert.kernels.group_norm as gn_module
    from gnconvert.kernels import GroupNorm

    model = _reference_model(exported[1])
    before = model.state_dict()
    expected = sum(type(m) is torch.nn.GroupNorm for m in model.modules())
    head = copy.deepcopy(torch.nn.Sequential(*list(model.roi_heads.mask_head)[:2]))  # 2 conv+GN+ReLU: interpreter is slow
    params = {id(p) for p in model.parameters()}
    assert gnconvert.use_group_norm_kernel(model) == expected == 1 + 16 * 3 + 4 + 8 + 4 + 4  # body, FPN, heads
    assert not any(type(m) is torch.nn.GroupNorm for m in model.modules())
    assert {id(p) for p in model.parameters()} == params
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)

    swapped = copy.deepcopy(head)
    # the kernel's op on the CPU: the Triton kernel, in Triton's interpreter (on CUDA, kernel=None picks it)
    assert gnconvert.use_group_norm_kernel(swapped, kernel=True) == 2 and isinstance(swapped[0][1], GroupNorm)
    calls = []
    kernel = gn_module.group_norm
    monkeypatch.setattr(gn_module, "group_norm", lambda *a: calls.append(1) or kernel(*a))
    x = torch.randn(2, 256, 8, 8)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = head(x1), swapped(x2)
    assert len(calls) == 2  # both layers ran the kernel's op
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(swapped[0][1].weight.grad, head[0][1].weight.grad, rtol=1e-3, atol=1e-3)


def test_example_finetunes_and_its_loss_goes_down(exported, tmp_path):
    """examples/finetune_torchvision.py, run where gnconvert cannot be imported, a few iterations on the same
    batch: the total loss falls (first two iterations vs last two)."""
    _, out = exported
    script = NO_GNCONVERT + f"sys.argv = [{str(EXAMPLE)!r}, {str(out)!r}, '--iterations', '4']\n" + \
        f"exec(compile(open({str(EXAMPLE)!r}).read(), {str(EXAMPLE)!r}, 'exec'), {{'__name__': '__main__'}})\n"
    run = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    totals = [float(v) for v in re.findall(r"^iter +\d+ loss=([\d.]+)", run.stdout, re.M)]
    assert len(totals) == 4 and all(np.isfinite(totals))
    assert all(name in run.stdout for name in LOSSES)
    assert np.mean(totals[-2:]) < 0.9 * np.mean(totals[:2]) and totals[-1] < totals[0]


def test_verify_backend_torchvision_measures_and_names_the_backend(golden_dir, seeded_pickle, tmp_path, capsys):
    from coco_fixture import build_coco

    from gnconvert.cli import main
    from gnconvert.errors import UsageError

    pkl = seeded_pickle(GN)
    with pytest.raises(SystemExit) as e:
        main(["verify", str(pkl), "--coco-root", str(tmp_path), "--backend", "torchvision", "--precision", "bf16",
              "--allow-slow"])  # on a CPU without bfloat16 instructions bf16 alone is refused first
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("gnconvert: error:")]
    assert e.value.code == UsageError.exit_code and "--backend torchvision" in error
    info = build_coco(tmp_path / "coco", golden_dir, TAG, layout="2017")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["verify", str(pkl), "--coco-root", str(info["root"]), "--backend", "torchvision", "--limit", "1",
              "--workers", "0", "--device", "cpu", "--no-progress", "--output", str(out)])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "backend: torchvision" in printed and "box AP" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["mode"]["backend"] == "torchvision" and report["images_evaluated"] == 1
    assert 0 <= report["metrics"]["bbox"]["AP"] <= 100 and report["group_norm"] is None
    assert os.path.isfile(report["files"]["bbox"])
