"""The network modules: hand-computed cases, float64 references, golden shapes, strict loading, TorchScript."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from gnconvert.architecture import AFFINE, GN, REFERENCE_ARCHITECTURES
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.fidelity.seeded import seeded_blobs
from gnconvert.kernels.group_norm import group_norm_torch as group_norm
from gnconvert.model import MaskRCNNNetwork, ResNetClassifier, build_network
from gnconvert.model.fpn import FPN, upsample_nearest_2x
from gnconvert.model.norm import AffineChannel, ConvNorm, GroupNorm, NoNorm, make_norm, set_group_norm_kernel
from gnconvert.model.resnet import Bottleneck, ResNetBody
from gnconvert.model.roi_heads import BoxPredictor, ConvFCBoxHead, MaskHead, MLPBoxHead
from gnconvert.model.rpn import RPNHead

GN_R50 = REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-50-FPN_2x_gn"]
BN_R50 = REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-50-FPN_2x"]
DETECTION = [n for n, a in REFERENCE_ARCHITECTURES.items() if a.kind == "mask_rcnn"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- norms


def test_affine_channel_by_hand():
    norm = AffineChannel(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, -1.0]))
        norm.bias.copy_(torch.tensor([0.5, 3.0]))
    x = torch.tensor([[[[1.0, -2.0]], [[4.0, 5.0]]]])  # [1, 2, 1, 2]
    expected = torch.tensor([[[[2.5, -3.5]], [[-1.0, -2.0]]]])
    assert torch.equal(norm(x), expected)
    assert torch.equal(norm(x, relu=True), expected.clamp(min=0))
    residual = torch.ones_like(x)
    assert torch.equal(norm(x, residual, True), (expected + 1).clamp(min=0))


def _group_norm_float64(x, groups, gamma, beta, eps):
    """Caffe2's definition: biased variance over (C/G, H, W), eps inside the square root."""
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, -1).astype(np.float64)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(n, c, h, w)
    return y * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)


@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True)])
def test_group_norm_matches_float64_reference(relu, with_residual):
    rng = np.random.RandomState(0)
    x = (rng.randn(2, 64, 5, 7) * 3 + 1).astype(np.float32)
    gamma, beta = rng.rand(64).astype(np.float32) + 0.5, rng.randn(64).astype(np.float32)
    residual = rng.randn(2, 64, 5, 7).astype(np.float32) if with_residual else None
    norm = GroupNorm(32, 64, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(gamma))
        norm.bias.copy_(torch.from_numpy(beta))
        got = norm(torch.from_numpy(x), None if residual is None else torch.from_numpy(residual), relu).numpy()
    expected = _group_norm_float64(x, 32, gamma, beta, 1e-5)
    if residual is not None:
        expected = expected + residual
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_functional_group_norm_without_affine():
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    got = group_norm(x, 1, None, None, 0.0)
    expected = (x - 3.5) / np.sqrt(5.25)  # mean of 0..7 is 3.5, biased variance 5.25
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, True)])
def test_fused_kernel_wiring_gives_the_same_result(monkeypatch, relu, with_residual):
    """Where the runtime chose the fused kernel (CUDA), a model's GroupNorm hands the op its arguments in
    its order.  Chosen here on the CPU, where the op computes in Triton's interpreter."""
    from gnconvert.kernels import group_norm as kernel_module

    x = torch.randn(2, 64, 5, 7, generator=gen())
    weight, bias = torch.rand(64, generator=gen(1)) + 0.5, torch.randn(64, generator=gen(2))
    residual = torch.randn(2, 64, 5, 7, generator=gen(3)) if with_residual else None
    expected = group_norm(x, 32, weight, bias, 1e-5, None if residual is None else residual.clone(), relu)
    conv = ConvNorm(64, 64, 3, norm=GN, num_groups=32, relu=relu)
    with torch.no_grad():
        conv.norm.weight.copy_(weight)
        conv.norm.bias.copy_(bias)
    calls = []
    real = kernel_module.group_norm
    monkeypatch.setattr(kernel_module, "group_norm", lambda *a: calls.append(a) or real(*a))
    with torch.no_grad():
        assert torch.equal(conv.norm(x, residual, relu), expected)  # built as gnconvert builds: PyTorch's
        assert calls == []
        set_group_norm_kernel(conv, True)
        torch.testing.assert_close(conv.norm(x, residual, relu), expected)
    assert len(calls) == 1 and calls[0][1:5] == (32, conv.norm.weight, conv.norm.bias, 1e-5)


def test_no_norm_only_adds_and_rectifies():
    x = torch.tensor([[[[-1.0, 2.0]]]])
    assert torch.equal(NoNorm()(x), x)
    assert torch.equal(NoNorm()(x, torch.ones_like(x), True), torch.tensor([[[[0.0, 3.0]]]]))


def test_make_norm_kinds():
    assert isinstance(make_norm(GN, 64), GroupNorm)
    assert isinstance(make_norm(AFFINE, 64), AffineChannel)
    assert isinstance(make_norm("none", 64), NoNorm)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("BN", 64)


def test_conv_norm_has_a_bias_only_without_norm():
    assert ConvNorm(4, 8, 3, norm=GN, num_groups=4).conv.bias is None
    assert ConvNorm(4, 8, 3, norm="none").conv.bias is not None
    assert ConvNorm(4, 8, 3, num_groups=4).conv.padding == (1, 1)


# --------------------------------------------------------------------------- body


def test_stride_sits_on_the_3x3_for_gn_and_on_the_1x1_for_msra():
    gn = Bottleneck(256, 128, 512, 2, stride_in_1x1=False, norm=GN, num_groups=32, eps=1e-5)
    bn = Bottleneck(256, 128, 512, 2, stride_in_1x1=True, norm=AFFINE, num_groups=32, eps=1e-5)
    assert (gn.conv1.stride, gn.conv2.stride) == ((1, 1), (2, 2))
    assert (bn.conv1.stride, bn.conv2.stride) == ((2, 2), (1, 1))
    assert gn.shortcut.conv.stride == bn.shortcut.conv.stride == (2, 2)
    x = torch.randn(1, 256, 8, 8, generator=gen())
    assert gn(x).shape == bn(x).shape == (1, 512, 4, 4)


def test_identity_blocks_have_no_projection():
    body = ResNetBody(BN_R50)
    assert isinstance(body.res2[1].shortcut, torch.nn.Identity)
    assert not isinstance(body.res2[0].shortcut, torch.nn.Identity)  # res2_0 has branch1 (64 -> 256)
    assert body.res2[0].conv2.stride == (1, 1) and body.res3[0].conv1.stride == (2, 2)


def test_bottleneck_matches_a_float64_reference():
    """conv/AffineChannel/ReLU x3, + projection shortcut, ReLU; written out with float64 convolutions."""
    torch.manual_seed(0)
    block = Bottleneck(8, 4, 16, 2, stride_in_1x1=True, norm=AFFINE, num_groups=1, eps=1e-5)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(2, 8, 6, 6, generator=gen(1))
    d = {k: v.double() for k, v in block.state_dict().items()}
    conv = torch.nn.functional.conv2d

    def affine(y, name):
        return y * d[f"{name}.weight"].view(1, -1, 1, 1) + d[f"{name}.bias"].view(1, -1, 1, 1)

    y = affine(conv(x.double(), d["conv1.weight"], stride=2), "norm1").clamp(min=0)
    y = affine(conv(y, d["conv2.weight"], padding=1), "norm2").clamp(min=0)
    y = affine(conv(y, d["conv3.weight"]), "norm3")
    shortcut = affine(conv(x.double(), d["shortcut.conv.weight"], stride=2), "shortcut.norm")
    expected = (y + shortcut).clamp(min=0)
    with torch.no_grad():
        torch.testing.assert_close(block(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_body_stage_shapes():
    with torch.device("meta"):
        body = ResNetBody(GN_R50)
        outs = body(torch.empty(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 256, 16, 24), (2, 512, 8, 12), (2, 1024, 4, 6), (2, 2048, 2, 3)]


@pytest.mark.parametrize("tag", ["R-50-FPN-GN_seed1__astronaut", "R-50-FPN-GN_seed1__wide_synthetic",
                                 "R-101-FPN-BN_seed1__astronaut"])
def test_pyramid_shapes_equal_detectrons(golden_dir, tag):
    golden = np.load(golden_dir / "detectron" / f"{tag}.npz")
    arch = REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-101-FPN_2x" if "R-101-FPN-BN" in tag else
                                    "e2e_mask_rcnn_R-50-FPN_2x_gn"]
    with torch.device("meta"):
        net = build_network(arch)
        feats, logits, deltas = net(torch.empty(*golden["data_shape"].tolist()))
    for level, p in zip(range(2, 7), feats):
        assert tuple(p.shape) == tuple(golden[f"p{level}_shape"]), level
    assert [tuple(t.shape[1:2]) for t in logits] == [(3,)] * 5 and [t.shape[1] for t in deltas] == [12] * 5


# --------------------------------------------------------------------------- FPN


def test_nearest_upsample_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([[[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]], dtype=torch.float32)
    assert torch.equal(upsample_nearest_2x(x), expected)


def test_fpn_matches_a_float64_reference():
    """Top-down sum of laterals with repeat-upsampling, 3x3 outputs, P6 = every other P5 pixel."""
    arch = dataclasses.replace(BN_R50, fpn_dim=8)
    torch.manual_seed(0)
    fpn = FPN(arch)
    sizes = {2: 16, 3: 8, 4: 4, 5: 2}
    feats = [torch.randn(1, c, sizes[k], sizes[k], generator=gen(k))
             for k, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048))]
    d = {k: v.double() for k, v in fpn.state_dict().items()}
    conv = torch.nn.functional.conv2d

    def up(t):
        return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    inner = {5: conv(feats[3].double(), d["lateral5.conv.weight"], d["lateral5.conv.bias"])}
    for k in (4, 3, 2):
        inner[k] = conv(feats[k - 2].double(), d[f"lateral{k}.conv.weight"], d[f"lateral{k}.conv.bias"]) + up(inner[k + 1])
    expected = [conv(inner[k], d[f"output{k}.conv.weight"], d[f"output{k}.conv.bias"], padding=1) for k in (2, 3, 4, 5)]
    expected.append(expected[3][:, :, 0::2, 0::2])
    with torch.no_grad():
        got = fpn(feats)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)
    assert got[4].shape[-1] == 1


def test_gn_fpn_normalises_the_lateral_before_the_sum():
    fpn = FPN(GN_R50)
    assert isinstance(fpn.lateral4.norm, GroupNorm) and fpn.lateral4.conv.bias is None
    with torch.no_grad():
        fpn.lateral4.norm.weight.zero_()
        fpn.lateral4.norm.bias.fill_(1.0)  # GN output is exactly 1, whatever the conv gives
    c4, top = torch.randn(1, 1024, 4, 4, generator=gen()), torch.randn(1, 256, 2, 2, generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(fpn.lateral4(c4, upsample_nearest_2x(top)), 1.0 + upsample_nearest_2x(top))


# --------------------------------------------------------------------------- heads


def test_rpn_head_outputs_raw_logits_per_level():
    head = RPNHead(GN_R50)
    feats = [torch.randn(2, 256, s, s, generator=gen(s)) for s in (8, 4, 2, 1)]
    with torch.no_grad():
        logits, deltas = head(feats)
    assert [tuple(t.shape) for t in logits] == [(2, 3, s, s) for s in (8, 4, 2, 1)]
    assert [tuple(t.shape) for t in deltas] == [(2, 12, s, s) for s in (8, 4, 2, 1)]
    assert min(float(t.min()) for t in logits) < 0  # not probabilities


def test_box_head_flattens_channel_major():
    """fc6 sees RoI feature (c, y, x) at column c*49 + y*7 + x, like Caffe2's FC on an NCHW blob."""
    head = MLPBoxHead(dataclasses.replace(BN_R50, fpn_dim=2, mlp_head_dim=98))
    with torch.no_grad():
        head.fc6.weight.copy_(torch.eye(98))
        head.fc6.bias.zero_()
        head.fc7.weight.copy_(torch.eye(98))
        head.fc7.bias.zero_()
        x = torch.zeros(1, 2, 7, 7)
        x[0, 1, 2, 3] = 5.0
        out = head(x)
    assert out.shape == (1, 98) and out[0, 1 * 49 + 2 * 7 + 3] == 5.0 and out.sum() == 5.0


def test_gn_box_head_shapes_and_names():
    head = ConvFCBoxHead(GN_R50)
    names = {k for k, _ in head.named_parameters()}
    assert {"conv1.conv.weight", "conv4.norm.bias", "fc6.weight", "fc6.bias"} <= names
    assert not any(k.startswith("fc7") for k in names)
    with torch.no_grad():
        out = head(torch.randn(3, 256, 7, 7, generator=gen()))
    assert out.shape == (3, 1024) and float(out.min()) >= 0


def test_box_predictor_shapes():
    with torch.no_grad():
        scores, deltas = BoxPredictor(GN_R50)(torch.randn(4, 1024, generator=gen()))
    assert scores.shape == (4, 81) and deltas.shape == (4, 324)


def test_mask_head_deconv_by_hand():
    """ConvTranspose 2x2/2: output (2y+i, 2x+j) = sum_c in[c, y, x] * W[c, o, i, j] + b[o]."""
    arch = dataclasses.replace(BN_R50, fpn_dim=1, mask_dim=1, num_classes=1)
    head = MaskHead(arch)
    with torch.no_grad():
        for fcn in (head.fcn1, head.fcn2, head.fcn3, head.fcn4):
            fcn.conv.weight.zero_()
            fcn.conv.weight[0, 0, 1, 1] = 1.0  # identity 3x3
            fcn.conv.bias.zero_()
        head.deconv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]]))
        head.deconv.bias.fill_(0.5)
        head.logits.weight.fill_(1.0)
        head.logits.bias.zero_()
        out = head(torch.tensor([[[[1.0, 2.0]]]]))
    expected = torch.tensor([[[[1.5, 2.5, 2.5, 4.5], [3.5, 0.0, 6.5, 0.0]]]])  # ReLU after the deconv
    assert torch.equal(out, expected)


def test_mask_head_shapes():
    with torch.no_grad():
        out = MaskHead(GN_R50)(torch.randn(2, 256, 14, 14, generator=gen()))
    assert out.shape == (2, 81, 28, 28) and float(out.min()) < 0  # logits, not probabilities


# --------------------------------------------------------------------------- whole networks


@functools.cache
def _mapped(name):
    arch = REFERENCE_ARCHITECTURES[name]
    return detectron_to_torch(seeded_blobs(arch, seed=1), arch)


@pytest.mark.parametrize("name", DETECTION)
def test_seeded_checkpoints_load_strictly(name):
    net = build_network(REFERENCE_ARCHITECTURES[name])
    assert isinstance(net, MaskRCNNNetwork)
    result = net.load_state_dict(_mapped(name).torch_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not list(net.buffers())  # everything a checkpoint holds is a parameter


def _detectron_input(image_path, arch) -> np.ndarray:
    """Detectron's blob, written out from its notes: BGR - means, cv2 resize by s, zero pad to /32."""
    import cv2

    im = cv2.imread(str(image_path)).astype(np.float32) - np.array(arch.pixel_means)
    h, w = im.shape[:2]
    s = arch.test.scale / min(h, w)
    if np.round(s * max(h, w)) > arch.test.max_size:
        s = arch.test.max_size / max(h, w)
    im = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    blob = np.zeros((1, 3, -(-im.shape[0] // 32) * 32, -(-im.shape[1] // 32) * 32), np.float32)
    blob[0, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return blob


def _roi_features(features, rois, resolution):
    """Detectron's FPN level rule and RoIAlign (torchvision's equals Caffe2's, see the notes)."""
    from torchvision.ops import roi_align

    rois = torch.from_numpy(rois.astype(np.float32))
    area = (rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1)
    levels = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-6)).clamp(2, 5).long()
    out = torch.zeros(len(rois), features[0].shape[1], resolution, resolution)
    for level in range(2, 6):
        idx = (levels == level).nonzero().flatten()
        if len(idx):
            out[idx] = roi_align(features[level - 2], rois[idx], resolution, 1.0 / 2 ** level, 2, False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tag,name,image", [
    ("R-50-FPN-GN_seed1", "e2e_mask_rcnn_R-50-FPN_2x_gn", "astronaut.png"),
    ("R-50-FPN-BN_seed1", "e2e_mask_rcnn_R-50-FPN_2x", "chelsea.png"),
])
def test_every_stage_reproduces_detectrons_intermediates(golden_dir, tag, name, image):
    """P2..P6, box head outputs on Detectron's own 1000 RoIs, mask probabilities on its mask RoIs."""
    import json

    arch = REFERENCE_ARCHITECTURES[name]
    net = build_network(arch).eval()
    net.load_state_dict(_mapped(name).torch_state_dict())
    golden = np.load(golden_dir / "detectron" / f"{tag}__{image.split('.')[0]}.npz")
    blob = _detectron_input(golden_dir / "images" / image, arch)
    assert blob.shape == tuple(golden["data_shape"])
    with torch.no_grad():
        features = net.features(torch.from_numpy(blob))
        for level, p in zip(range(2, 7), features):
            crop = golden[f"p{level}_crop"]
            got = p[0, : crop.shape[0], : crop.shape[1], : crop.shape[2]].numpy()
            assert np.abs(got - crop).max() <= 1e-4 * np.abs(crop).max(), level
            np.testing.assert_allclose(p[0].mean(dim=(1, 2)).numpy(), golden[f"p{level}_channel_mean"],
                                       rtol=1e-4, atol=1e-4 * np.abs(golden[f"p{level}_channel_mean"]).max())
        scores, deltas = net.box_predictor(net.box_head(_roi_features(features, golden["rois"], 7)))
        np.testing.assert_allclose(torch.softmax(scores, 1).numpy(), golden["cls_prob"], atol=1e-4)
        np.testing.assert_allclose(deltas.numpy(), golden["bbox_pred"], atol=1e-4 * np.abs(golden["bbox_pred"]).max())
        logits = net.mask_head(_roi_features(features, golden["mask_rois"], 14))
    detections = json.loads((golden_dir / "detectron" / f"{tag}.json").read_text())[image]["detections"]
    classes = torch.tensor([d["category_index"] for d in detections])
    probs = torch.sigmoid(logits[torch.arange(len(classes)), classes]).numpy()
    np.testing.assert_allclose(probs, golden["mask_probs"], atol=1e-4)


def test_build_network_by_kind():
    assert isinstance(build_network(REFERENCE_ARCHITECTURES["ImageNet_R-50-GN"]), ResNetClassifier)
    with pytest.raises(ValueError, match="unknown architecture kind 'retinanet'"):
        build_network(dataclasses.replace(GN_R50, kind="retinanet"))


def test_torchscript_network_equals_eager():
    net = build_network(GN_R50).eval()
    net.load_state_dict(_mapped("e2e_mask_rcnn_R-50-FPN_2x_gn").torch_state_dict())
    scripted = torch.jit.script(net)
    x = torch.randn(1, 3, 64, 96, generator=gen()) * 50
    with torch.no_grad():
        eager_out, script_out = net(x), scripted(x)
    for eager_list, script_list in zip(eager_out, script_out):
        for e, s in zip(eager_list, script_list):
            torch.testing.assert_close(s, e)
    x = torch.randn(2, 256, 7, 7, generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net.box_head)(x), net.box_head(x))


@pytest.mark.parametrize("name", ["e2e_mask_rcnn_R-50-FPN_2x", "ImageNet_R-50-GN"])
def test_other_networks_script_too(name):
    net = build_network(REFERENCE_ARCHITECTURES[name]).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 3, 64, 64, generator=gen())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        if isinstance(net, MaskRCNNNetwork):
            rois = torch.randn(2, 256, 7, 7, generator=gen(1))
            torch.testing.assert_close(torch.jit.script(net.box_head)(rois), net.box_head(rois))
            masks = torch.randn(2, 256, 14, 14, generator=gen(2))
            torch.testing.assert_close(torch.jit.script(net.mask_head)(masks), net.mask_head(masks))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_network_matches_cpu_with_the_fused_kernel():
    """On CUDA GroupNorm goes through gnconvert.kernels.group_norm; results agree with the CPU path."""
    from gnconvert.kernels import choose_backend

    net = build_network(GN_R50).eval()
    net.load_state_dict(_mapped("e2e_mask_rcnn_R-50-FPN_2x_gn").torch_state_dict())
    set_group_norm_kernel(net, choose_backend("cuda").kernel)
    x = torch.randn(1, 3, 128, 160, generator=gen()) * 50
    with torch.no_grad():
        cpu = net.features(x)
        gpu = net.cuda().features(x.cuda())
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-3, atol=1e-3)
