"""The blob <-> parameter table: Detectron's inventories, exhaustiveness, errors, bit-exact round trip."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from gnconvert.architecture import REFERENCE_ARCHITECTURES
from gnconvert.checkpoint.name_mapping import (
    IMAGENET_FC_REASON,
    detectron_to_torch,
    expected_inventory,
    mapping_rules,
    preserved_inventory,
    torch_to_detectron,
)
from gnconvert.errors import MappingError
from gnconvert.fidelity.seeded import seeded_blobs

GN_R50 = "e2e_mask_rcnn_R-50-FPN_2x_gn"
BN_R50 = "e2e_mask_rcnn_R-50-FPN_2x"


@functools.cache
def _seeded(name: str):
    return seeded_blobs(REFERENCE_ARCHITECTURES[name], seed=1)


def seeded(name: str) -> dict:
    """A fresh dict (the arrays are shared and must not be modified)."""
    return dict(_seeded(name))


@pytest.mark.parametrize("name", list(REFERENCE_ARCHITECTURES))
def test_expected_inventory_is_detectrons(golden_dir, name):
    inv = json.loads((golden_dir / "inventory" / f"{name}.json").read_text())
    arch = REFERENCE_ARCHITECTURES[name]
    assert expected_inventory(arch) == [(b["name"], tuple(b["shape"]), b["trainable"]) for b in inv["blobs"]]
    assert sorted(preserved_inventory(arch)) == sorted((b["name"], tuple(b["shape"])) for b in inv.get("preserved", []))


@pytest.mark.parametrize("name", list(REFERENCE_ARCHITECTURES))
def test_table_is_one_to_one(name):
    rules = mapping_rules(REFERENCE_ARCHITECTURES[name])
    assert len({r.blob for r in rules}) == len(rules) == len({r.param for r in rules})


@pytest.mark.parametrize("name", list(REFERENCE_ARCHITECTURES))
def test_full_size_round_trip_is_bit_exact(name):
    arch = REFERENCE_ARCHITECTURES[name]
    blobs = seeded(name)
    result = detectron_to_torch(blobs, arch)
    # every blob is in exactly one place
    assert len(result.state_dict) + len(result.dropped) == len(blobs)
    assert not set(result.dropped) & {r.blob for r in mapping_rules(arch)}
    extra = {k: blobs[k] for k in result.dropped}
    back = torch_to_detectron(result.torch_state_dict(), arch, extra_blobs=extra)
    assert sorted(back) == sorted(blobs)
    for k, v in blobs.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes(), k


def test_known_pairs_by_hand():
    """A few rows checked by reading Detectron's builders (ResNet.py, FPN.py, heads)."""
    gn = {r.blob: (r.param, r.shape) for r in mapping_rules(REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-101-FPN_2x_gn"])}
    assert gn["conv1_gn_s"] == ("body.stem.norm.weight", (64,))
    assert gn["res4_22_branch2c_gn_b"] == ("body.res4.22.norm3.bias", (1024,))
    assert gn["res3_0_branch1_w"] == ("body.res3.0.shortcut.conv.weight", (512, 256, 1, 1))
    assert gn["res2_0_branch2b_w"] == ("body.res2.0.conv2.weight", (64, 64, 3, 3))
    assert gn["fpn_inner_res5_2_sum_w"] == ("fpn.lateral5.conv.weight", (256, 2048, 1, 1))
    assert gn["fpn_inner_res4_22_sum_lateral_gn_s"] == ("fpn.lateral4.norm.weight", (256,))
    assert gn["fpn_res2_2_sum_w"] == ("fpn.output2.conv.weight", (256, 256, 3, 3))
    assert gn["rpn_bbox_pred_fpn2_w"] == ("rpn_head.bbox_pred.weight", (12, 256, 1, 1))
    assert gn["head_conv4_gn_s"] == ("box_head.conv4.norm.weight", (256,))
    assert gn["fc6_w"] == ("box_head.fc6.weight", (1024, 256 * 7 * 7))
    assert gn["bbox_pred_b"] == ("box_predictor.bbox_pred.bias", (324,))
    assert gn["_mask_fcn3_gn_b"] == ("mask_head.fcn3.norm.bias", (256,))
    assert gn["conv5_mask_w"] == ("mask_head.deconv.weight", (256, 256, 2, 2))
    assert gn["mask_fcn_logits_w"] == ("mask_head.logits.weight", (81, 256, 1, 1))
    bn = {r.blob: r.param for r in mapping_rules(REFERENCE_ARCHITECTURES[BN_R50])}
    assert bn["res_conv1_bn_s"] == "body.stem.norm.weight"
    assert bn["res5_2_branch2a_bn_b"] == "body.res5.2.norm1.bias"
    assert bn["fpn_inner_res3_3_sum_lateral_b"] == "fpn.lateral3.conv.bias"
    assert bn["_[mask]_fcn1_b"] == "mask_head.fcn1.conv.bias"
    assert bn["fc7_w"] == "box_head.fc7.weight"
    cls = {r.blob: r.param for r in mapping_rules(REFERENCE_ARCHITECTURES["ImageNet_R-50-GN"])}
    assert cls["pred_w"] == "fc.weight" and cls["pred_b"] == "fc.bias"


def test_drop_list_names_every_reason():
    blobs = seeded(GN_R50)
    blobs["iter"] = np.array([180000], dtype=np.int64)
    blobs["lr"] = np.array([0.0002], dtype=np.float64)
    dropped = detectron_to_torch(blobs, REFERENCE_ARCHITECTURES[GN_R50]).dropped
    assert dropped["pred_w"] == dropped["pred_b"] == IMAGENET_FC_REASON
    assert dropped["fc6_w_momentum"] == "optimizer momentum of fc6_w"
    assert "iteration" in dropped["iter"] and "learning rate" in dropped["lr"]
    assert {k for k in dropped if not k.endswith("_momentum")} == {"pred_w", "pred_b", "iter", "lr"}


def test_scratch_model_needs_no_imagenet_fc():
    name = "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn"
    assert "pred_w" not in seeded(name)
    assert detectron_to_torch(seeded(name), REFERENCE_ARCHITECTURES[name]).dropped


def _mapping_error(blobs, name=GN_R50) -> str:
    with pytest.raises(MappingError) as err:
        detectron_to_torch(blobs, REFERENCE_ARCHITECTURES[name])
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_blob_is_named():
    blobs = seeded(GN_R50)
    del blobs["res4_3_branch2b_gn_s"]
    assert "1 missing: res4_3_branch2b_gn_s" in _mapping_error(blobs)


def test_unexpected_blob_is_named_even_with_a_known_suffix():
    blobs = seeded(GN_R50)
    blobs["gpu_0/fc6_w"] = blobs["fc6_w"]  # no suffix matching, no prefix stripping
    blobs["fc8_w_momentum"] = blobs["fc6_w_momentum"]  # momentum of nothing we have
    message = _mapping_error(blobs)
    assert "2 unexpected" in message and "gpu_0/fc6_w" in message and "fc8_w_momentum" in message


def test_mis_shaped_blob_shows_both_shapes():
    blobs = seeded(GN_R50)
    blobs["cls_score_w"] = np.zeros((2, 1024), np.float32)
    blobs["fc6_w_momentum"] = np.zeros((3,), np.float32)
    message = _mapping_error(blobs)
    assert "cls_score_w (2, 1024) != (81, 1024)" in message
    assert "fc6_w_momentum (3,) != (1024, 12544)" in message


def test_non_float_payload_is_refused():
    blobs = seeded(GN_R50)
    blobs["conv1_w"] = np.zeros((64, 3, 7, 7), np.int32)
    blobs["conv1_gn_s"] = "not an array"
    message = _mapping_error(blobs)
    assert "2 not float arrays" in message and "conv1_w" in message and "conv1_gn_s (str)" in message


def test_wrong_mask_spelling_lists_missing_and_unexpected():
    """The GN head is `_mask_fcn*`; the BN* spelling `_[mask]_fcn*` is a different model."""
    blobs = seeded(GN_R50)
    for i in range(1, 5):
        for suffix in ("w", "gn_s", "gn_b"):
            blobs[f"_[mask]_fcn{i}_{suffix}"] = blobs.pop(f"_mask_fcn{i}_{suffix}")
    message = _mapping_error(blobs)
    assert "12 missing: _mask_fcn1_gn_b" in message and "(+7 more)" in message
    assert "12 unexpected" in message and "_[mask]_fcn1_w" in message


def test_bn_blobs_against_gn_architecture_fail_loudly():
    message = _mapping_error(seeded(BN_R50), GN_R50)
    assert "missing: _mask_fcn1_gn_b" in message and "unexpected: _[mask]_fcn1_b" in message


def test_floating_blobs_are_cast_to_float32_like_detectron():
    blobs = seeded(GN_R50)
    blobs["cls_score_b"] = blobs["cls_score_b"].astype(np.float64)
    state = detectron_to_torch(blobs, REFERENCE_ARCHITECTURES[GN_R50]).state_dict
    assert state["box_predictor.cls_score.bias"].dtype == np.float32
    np.testing.assert_array_equal(state["box_predictor.cls_score.bias"], _seeded(GN_R50)["cls_score_b"])


def test_torch_to_detectron_refuses_incomplete_or_foreign_state():
    arch = REFERENCE_ARCHITECTURES["ImageNet_R-50-GN"]
    state = detectron_to_torch(seeded("ImageNet_R-50-GN"), arch).state_dict
    broken = dict(state)
    del broken["fc.bias"]
    broken["head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError, match="1 missing: fc.bias; 1 unexpected: head.weight"):
        torch_to_detectron(broken, arch)
    with pytest.raises(MappingError, match="clashing: pred_w"):
        torch_to_detectron(state, arch, extra_blobs={"pred_w": np.zeros(1, np.float32)})


def test_msra_leftovers_are_dropped_only_from_bn_detectors():
    """MSRA/R-50.pkl's `fc1000_*` and `conv1_b` ride along in the BN* detectors trained from it."""
    leftovers = {"fc1000_w": np.zeros((1000, 2048), np.float32), "fc1000_b": np.zeros(1000, np.float32),
                 "conv1_b": np.zeros(64, np.float32)}
    dropped = detectron_to_torch({**seeded(BN_R50), **leftovers}, REFERENCE_ARCHITECTURES[BN_R50]).dropped
    assert "fc1000" not in dropped["conv1_b"] and "no bias" in dropped["conv1_b"]
    assert "MSRA" in dropped["fc1000_w"] and "MSRA" in dropped["fc1000_b"]
    message = _mapping_error({**seeded(GN_R50), **leftovers}, GN_R50)
    assert "3 unexpected: conv1_b, fc1000_b, fc1000_w" in message


def test_table_prints_one_row_per_parameter():
    from gnconvert.checkpoint.name_mapping import format_table

    arch = REFERENCE_ARCHITECTURES["ImageNet_R-50-GN"]
    lines = format_table(arch).splitlines()
    assert len(lines) == 1 + 161 and lines[-1].split() == ["pred_b", "->", "fc.bias", "[1000]", "(frozen)"]
