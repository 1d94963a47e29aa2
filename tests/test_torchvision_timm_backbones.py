"""The ImageNet GN backbones as timm's and torchvision's own ResNets.

Expectations: Detectron's golden classifier outputs (`classifier/ImageNet_R-*-GN_seed1.npz`, Caffe2 on
the seed-1 weights), the libraries' own models (their state-dict keys, timm's data config) and the
names torchvision uses, written out by hand from its modules.
"""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from gnconvert.architecture import REFERENCE_ARCHITECTURES
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.errors import UsageError
from gnconvert.export import torchvision_weights as tw
from gnconvert.fidelity.seeded import seeded_blobs

RTOL = 1e-4  # of max |logit|: float32 noise between Caffe2's and PyTorch's kernels
BGR_MEANS = np.array([102.9801, 115.9465, 122.7717])


def _ckpt(name: str) -> ConvertedCheckpoint:
    arch = REFERENCE_ARCHITECTURES[name]
    return ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, 1), arch).state_dict, arch=arch)


@pytest.fixture(scope="module")
def classifier():
    made = {}

    def get(depth):
        if depth not in made:
            made[depth] = _ckpt(f"ImageNet_R-{depth}-GN")
        return made[depth]
    return get


def _library_input(data: np.ndarray, mean, std) -> torch.Tensor:
    """Detectron's input (BGR minus BGR means, 0..255) as the RGB 0..1 image it came from, then the
    library's normalisation with `mean`, `std`."""
    rgb01 = (data[:, ::-1] + BGR_MEANS[::-1].reshape(1, 3, 1, 1)) / 255.0
    x = (rgb01 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize("library", ["torchvision", "timm"])
@pytest.mark.parametrize("depth", [50, 101])
def test_backbone_reproduces_detectrons_logits(golden_dir, classifier, depth, library):
    import gnconvert

    if library == "timm":
        pytest.importorskip("timm")
    ckpt = classifier(depth)
    model = gnconvert.to_torchvision(ckpt) if library == "torchvision" else gnconvert.to_timm(ckpt)
    golden = np.load(golden_dir / "classifier" / f"ImageNet_R-{depth}-GN_seed1.npz")
    mean, std = tuple(BGR_MEANS[::-1] / 255.0), (1 / 255.0,) * 3  # the documented values, derived by hand
    with torch.no_grad():
        logits = model(_library_input(golden["data"].astype(np.float64), mean, std)).numpy()
    err = float(np.abs(logits - golden["pred"]).max() / np.abs(golden["pred"]).max())
    print(f"{library} R-{depth}-GN: logits max error {err:.2e} of max |logit|")
    assert err < RTOL
    top5 = lambda a: np.argsort(-a, axis=1)[:, :5]  # noqa: E731
    assert np.array_equal(top5(logits), top5(golden["pred"]))


# our name -> torchvision's, read off torchvision's ResNet / FPN / MaskRCNN modules by hand
EXPECTED_NAMES = {
    "ImageNet_R-101-GN": {
        "body.stem.conv.weight": "conv1.weight", "body.stem.norm.bias": "bn1.bias",
        "body.res2.0.shortcut.conv.weight": "layer1.0.downsample.0.weight",
        "body.res2.0.shortcut.norm.weight": "layer1.0.downsample.1.weight",
        "body.res4.22.conv2.weight": "layer3.22.conv2.weight", "body.res5.2.norm3.bias": "layer4.2.bn3.bias",
        "fc.weight": "fc.weight", "fc.bias": "fc.bias",
    },
    "e2e_mask_rcnn_R-50-FPN_2x_gn": {
        "body.res3.0.norm1.weight": "backbone.body.layer2.0.bn1.weight",
        "fpn.lateral2.conv.weight": "backbone.fpn.inner_blocks.0.0.weight",
        "fpn.lateral5.norm.weight": "backbone.fpn.inner_blocks.3.1.weight",
        "fpn.output5.norm.bias": "backbone.fpn.layer_blocks.3.1.bias",
        "rpn_head.conv.weight": "rpn.head.conv.0.0.weight", "rpn_head.bbox_pred.bias": "rpn.head.bbox_pred.bias",
        "box_head.conv1.norm.weight": "roi_heads.box_head.0.1.weight", "box_head.fc6.weight": "roi_heads.box_head.5.weight",
        "box_predictor.cls_score.weight": "roi_heads.box_predictor.cls_score.weight",
        "mask_head.fcn4.conv.weight": "roi_heads.mask_head.3.0.weight",
        "mask_head.deconv.weight": "roi_heads.mask_predictor.conv5_mask.weight",
        "mask_head.logits.bias": "roi_heads.mask_predictor.mask_fcn_logits.bias",
    },
    "e2e_mask_rcnn_R-50-FPN_2x": {
        "body.res5.0.norm2.weight": "backbone.body.layer4.0.bn2.weight",
        "fpn.output3.conv.bias": "backbone.fpn.layer_blocks.1.0.bias",
        "box_head.fc7.weight": "roi_heads.box_head.fc7.weight", "mask_head.fcn1.conv.bias": "roi_heads.mask_head.0.0.bias",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_names_are_the_libraries_own(name):
    """A renamed key on either side fails here: the hand-written pairs, and the exact key set (with shapes) of
    the model torchvision (and timm) build themselves."""
    from gnconvert.export.torchvision_builder import detectron_maskrcnn
    from gnconvert.export.torchvision_weights import builder_kwargs
    from gnconvert.model import build_network

    arch = REFERENCE_ARCHITECTURES[name]
    with torch.device("meta"):
        ours = build_network(arch).state_dict()
    name_of = tw.torchvision_names(arch)
    for k, v in EXPECTED_NAMES[name].items():
        assert name_of(k) == v
    converted = tw.torchvision_state_dict({k: np.zeros(v.shape, np.float32) for k, v in ours.items()}, arch)
    if arch.kind == "classifier":
        from gnconvert.export.torchvision_api import torchvision_resnet

        theirs = [torchvision_resnet(arch.depth).state_dict()]
        try:
            from gnconvert.export.torchvision_api import timm_resnet

            theirs.append(timm_resnet(arch.depth).state_dict())
        except UsageError:  # timm is not installed: torchvision's names only
            pass
    else:
        theirs = [detectron_maskrcnn(**builder_kwargs(arch)).state_dict()]
    for state in theirs:
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: v.shape for k, v in converted.items()}


def test_class_rows_move_to_coco_ids():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    # torchvision's own COCO label list is the layout we fill
    assert tw.category_names() == MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    rows = np.arange(81, dtype=np.float32)[:, None] + 1000  # Detectron row i holds 1000 + i
    out = tw.coco_layout(rows, -7.0)
    assert out.shape == (91, 1) and out[0, 0] == 1000  # background stays first
    assert out[1, 0] == 1001 and out[11, 0] == 1011  # person .. fire hydrant: ids 1..11 are classes 1..11
    assert out[13, 0] == 1012 and out[18, 0] == 1017 and out[90, 0] == 1080  # stop sign, dog, toothbrush
    unused = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert np.all(out[unused, 0] == -7.0) and len(set(out[:, 0]) - {-7.0}) == 81
    deltas = tw.coco_layout(np.arange(81 * 4, dtype=np.float32)[:, None], 0.0, per_class=4)
    assert np.array_equal(deltas[18 * 4: 19 * 4, 0], np.arange(17 * 4, 18 * 4))
    # the unused classes' softmax is exactly 0 in float32, whatever the other logits
    logits = torch.randn(1000, 81) * 30
    bias = torch.from_numpy(tw.coco_layout(np.zeros(81, np.float32), tw.UNUSED_CLASS_BIAS))
    probs = torch.softmax(torch.from_numpy(tw.coco_layout(logits.T.numpy(), 0.0)).T + bias, dim=1)
    assert probs[:, unused].max().item() == 0.0
    torch.testing.assert_close(probs[:, [0] + [i for i in range(1, 91) if i not in unused]], torch.softmax(logits, 1))


def _cli(argv, capsys):
    from gnconvert.cli import main

    try:
        main(argv)
    except SystemExit as e:
        if e.code:
            raise
    return capsys.readouterr()


def test_export_cli_timm_loads_in_timm_and_its_transforms_carry_detectrons_preprocessing(golden_dir, seeded_pickle,
                                                                                          tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config

    out = tmp_path / "r50gn.safetensors"
    printed = _cli(["export", str(seeded_pickle("ImageNet_R-50-GN")), "--to", "timm", "-o", str(out)], capsys).out
    assert "verify timm" in printed and "PASS" in printed and "logits" in printed
    config = json.loads((tmp_path / "r50gn.json").read_text())
    assert config["architecture"] == "resnet50_gn" and config["num_classes"] == 1000
    # timm's own loading path: a folder with model.safetensors + config.json
    folder = tmp_path / "hub"
    folder.mkdir()
    shutil.copy(out, folder / "model.safetensors")
    shutil.copy(tmp_path / "r50gn.json", folder / "config.json")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data = resolve_data_config(model=model)
    assert data["interpolation"] == "bilinear" and tuple(data["input_size"]) == (3, 224, 224) and data["crop_pct"] == 0.875
    np.testing.assert_allclose(data["mean"], BGR_MEANS[::-1] / 255.0, rtol=1e-7)
    np.testing.assert_allclose(data["std"], [1 / 255.0] * 3, rtol=1e-7)
    golden = np.load(golden_dir / "classifier" / "ImageNet_R-50-GN_seed1.npz")
    with torch.no_grad():
        logits = model(_library_input(golden["data"].astype(np.float64), data["mean"], data["std"])).numpy()
    assert np.abs(logits - golden["pred"]).max() / np.abs(golden["pred"]).max() < RTOL
    # and the plain call the issue names, strict
    from safetensors.torch import load_file

    plain = timm.create_model("resnet50_gn", pretrained=False, num_classes=1000)
    assert not plain.load_state_dict(load_file(out), strict=True).missing_keys


def test_export_cli_torchvision_backbone_loads_strictly(seeded_pickle, tmp_path, capsys):
    import torchvision
    from torch import nn

    out = tmp_path / "r50gn.pth"
    printed = _cli(["export", str(seeded_pickle("ImageNet_R-50-GN")), "--to", "torchvision", "-o", str(out)], capsys).out
    assert "verify torchvision" in printed and "PASS" in printed
    model = torchvision.models.resnet50(norm_layer=lambda c: nn.GroupNorm(32, c))
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    sidecar = json.loads((tmp_path / "r50gn.json").read_text())
    assert sidecar["transforms"]["crop_size"] == 224 and sidecar["transforms"]["resize_size"] == 256
    np.testing.assert_allclose(sidecar["transforms"]["mean"], BGR_MEANS[::-1] / 255.0, rtol=1e-7)


def test_bad_requests_are_one_line_errors_and_write_nothing(seeded_pickle, tmp_path, monkeypatch):
    from gnconvert.export import export, output_paths

    with pytest.raises(UsageError, match="sidecar"):
        output_paths("torchvision", tmp_path / "model.json")
    with pytest.raises(UsageError, match="ImageNet backbones"):
        export(_ckpt("e2e_mask_rcnn_R-50-FPN_2x_gn"), "timm", tmp_path / "x.safetensors")
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    with pytest.raises(UsageError, match=r"pip install 'gnconvert\[timm\]'"):
        output_paths("timm", tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_readme_backbone_snippet_runs_without_gnconvert(classifier, tmp_path):
    """The README's timm / torchvision block itself, on files the exports wrote, where gnconvert cannot be imported."""
    import re
    import subprocess
    from pathlib import Path

    pytest.importorskip("timm")
    from gnconvert.export import export

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "resnet50_gn" in b]
    export(classifier(50), "timm", tmp_path / "r50gn.safetensors", verify=False)
    export(classifier(50), "torchvision", tmp_path / "r50gn_tv.pth", verify=False)
    script = ("import sys; sys.modules['gnconvert'] = None\n" + block
              + "\nassert data['interpolation'] == 'bilinear' and round(1 / data['std'][0]) == 255\n")
    run = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
