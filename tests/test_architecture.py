"""The Architecture record from Detectron's real embedded cfg texts, from config files and from blobs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gnconvert.architecture import (
    AFFINE,
    GN,
    REFERENCE_ARCHITECTURES,
    Architecture,
    architecture_from_blobs,
    architecture_from_cfg,
    architecture_from_checkpoint,
)
from gnconvert.checkpoint.detectron_cfg import parse_detectron_cfg
from gnconvert.errors import CheckpointError

DETECTION = [n for n, a in REFERENCE_ARCHITECTURES.items() if a.kind == "mask_rcnn"]


def load_golden_cfg(golden_dir, name: str) -> dict:
    """A real embedded cfg text, read by the package's safe parser."""
    return parse_detectron_cfg((golden_dir / "cfg" / f"{name}.yaml").read_text())


def inventory_blobs(golden_dir, name: str, momentum: bool = True) -> dict:
    """Zero-cost stand-in blobs with the inventory's names and shapes (values unused here)."""
    inv = json.loads((golden_dir / "inventory" / f"{name}.json").read_text())
    blobs = {}
    for b in inv["blobs"] + inv.get("preserved", []):
        blobs[b["name"]] = np.broadcast_to(np.float32(0), tuple(b["shape"]))
        if momentum and b.get("trainable"):
            blobs[b["name"] + "_momentum"] = blobs[b["name"]]
    return blobs


# --------------------------------------------------------------------------- #
# cfg -> Architecture
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", DETECTION)
def test_golden_cfg_decodes_to_reference_architecture(golden_dir, name):
    assert architecture_from_cfg(load_golden_cfg(golden_dir, name)) == REFERENCE_ARCHITECTURES[name]


def test_gn_cfg_values_read_from_the_text(golden_dir):
    arch = architecture_from_cfg(load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn"))
    assert (arch.depth, arch.norm, arch.stride_in_1x1, arch.fpn_norm) == (50, GN, False, GN)
    assert (arch.box_head, arch.mask_head, arch.num_classes) == ("4conv1fc_gn", "4conv_gn", 81)
    # float64 values from the !!binary payloads: BGR means and log(1000/16)
    assert arch.pixel_means == (102.9801, 115.9465, 122.7717)
    assert arch.bbox_xform_clip == math.log(1000.0 / 16.0)
    assert arch.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    t = arch.test
    assert (t.scale, t.max_size, t.nms, t.score_thresh, t.detections_per_im) == (800, 1333, 0.5, 0.05, 100)
    assert (t.rpn_pre_nms_top_n, t.rpn_post_nms_top_n, t.rpn_nms_thresh, t.mask_thresh_binarize) == (1000, 1000, 0.7, 0.5)


def test_bn_cfg_is_msra_affine_with_2fc_head(golden_dir):
    arch = architecture_from_cfg(load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-101-FPN_2x"))
    assert (arch.depth, arch.norm, arch.stride_in_1x1, arch.fpn_norm) == (101, AFFINE, True, "none")
    assert (arch.box_head, arch.mask_head) == ("2fc", "4conv")


def test_scratch_cfg_trains_everything_and_has_no_imagenet_start(golden_dir):
    arch = architecture_from_cfg(load_golden_cfg(golden_dir, "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn"))
    assert arch.freeze_at == 0 and not arch.pretrained_on_imagenet


def test_saved_cfg_without_bbox_reg_weights_uses_ones(golden_dir):
    """Detectron's configure_bbox_reg_weights: models older than the key decode with (1, 1, 1, 1)."""
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x")
    del cfg["MODEL"]["BBOX_REG_WEIGHTS"]
    assert architecture_from_cfg(cfg, embedded=True).bbox_reg_weights == (1.0, 1.0, 1.0, 1.0)
    # a --config file that omits it gets core/config.py's default instead
    assert architecture_from_cfg(cfg, embedded=False).bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)


UNSUPPORTED = [
    ("RESNETS", "RES5_DILATION", 2, "RES5_DILATION"),
    ("RESNETS", "NUM_GROUPS", 32, "NUM_GROUPS"),
    ("MODEL", "CLS_AGNOSTIC_BBOX_REG", True, "CLS_AGNOSTIC_BBOX_REG"),
    ("MODEL", "KEYPOINTS_ON", True, "KEYPOINTS_ON"),
    ("MODEL", "CONV_BODY", "ResNet.add_ResNet50_conv4_body", "CONV_BODY"),
    ("MODEL", "MASK_ON", False, "MASK_ON"),
    ("FPN", "USE_GN", True, None),  # supported: a GN FPN on a BN body is still buildable
    ("MRCNN", "DILATION", 2, "DILATION"),
    ("MRCNN", "ROI_MASK_HEAD", "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare", "ROI_MASK_HEAD"),
    ("FAST_RCNN", "ROI_BOX_HEAD", "fast_rcnn_heads.add_roi_Xconv1fc_head", "ROI_BOX_HEAD"),
    ("GROUP_NORM", "DIM_PER_GP", 16, "DIM_PER_GP"),
    ("FPN", "RPN_MAX_LEVEL", 5, "RPN_MAX_LEVEL"),
    ("FPN", "EXTRA_CONV_LEVELS", True, "EXTRA_CONV_LEVELS"),
]


@pytest.mark.parametrize("section,key,value,named", UNSUPPORTED)
def test_unsupported_settings_are_refused_by_name(golden_dir, section, key, value, named):
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x")
    cfg[section][key] = value
    if named is None:
        architecture_from_cfg(cfg)
        return
    with pytest.raises(CheckpointError, match=named) as err:
        architecture_from_cfg(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("path", ["SOFT_NMS", "BBOX_VOTE", "BBOX_AUG"])
def test_test_time_variants_are_refused(golden_dir, path):
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn")
    cfg["TEST"][path]["ENABLED"] = True
    with pytest.raises(CheckpointError, match=path):
        architecture_from_cfg(cfg)


def test_mixed_body_functions_are_refused(golden_dir):
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn")
    cfg["RESNETS"]["STEM_FUNC"] = "basic_bn_stem"
    with pytest.raises(CheckpointError, match="STEM"):
        architecture_from_cfg(cfg)


def test_config_file_overrides_merge_over_detectron_defaults():
    """A config file lists only what it changes; Detectron literal-evals string values."""
    overrides = {
        "MODEL": {"TYPE": "generalized_rcnn", "CONV_BODY": "FPN.add_fpn_ResNet50_conv5_body", "NUM_CLASSES": 81,
                  "FASTER_RCNN": True, "MASK_ON": True},
        "FPN": {"FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True},
        "FAST_RCNN": {"ROI_BOX_HEAD": "fast_rcnn_heads.add_roi_2mlp_head", "ROI_XFORM_METHOD": "RoIAlign",
                      "ROI_XFORM_RESOLUTION": 7, "ROI_XFORM_SAMPLING_RATIO": 2},
        "MRCNN": {"ROI_MASK_HEAD": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs", "RESOLUTION": 28,
                  "ROI_XFORM_RESOLUTION": 14, "ROI_XFORM_SAMPLING_RATIO": 2, "DILATION": 1},
        "TRAIN": {"WEIGHTS": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"},
        "TEST": {"SCALE": 800, "MAX_SIZE": 1333, "NMS": 0.5, "RPN_PRE_NMS_TOP_N": 1000, "RPN_POST_NMS_TOP_N": 1000},
    }
    # the 12_2017 R-50 BN* config: everything else is core/config.py's default
    assert architecture_from_cfg(overrides, embedded=False) == REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-50-FPN_2x"]
    overrides["TEST"]["SCALE"] = "800"
    overrides["MODEL"]["BBOX_REG_WEIGHTS"] = "(1., 1., 1., 1.)"
    arch = architecture_from_cfg(overrides, embedded=False)
    assert arch.test.scale == 800 and arch.bbox_reg_weights == (1.0, 1.0, 1.0, 1.0)


def test_default_dilation_two_is_refused_when_a_config_omits_it():
    """core/config.py's MRCNN.DILATION is 2; the published configs all set 1."""
    with pytest.raises(CheckpointError, match="MRCNN.DILATION=2"):
        architecture_from_cfg({
            "MODEL": {"TYPE": "generalized_rcnn", "CONV_BODY": "FPN.add_fpn_ResNet50_conv5_body",
                      "FASTER_RCNN": True, "MASK_ON": True},
            "FPN": {"FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True},
            "FAST_RCNN": {"ROI_BOX_HEAD": "fast_rcnn_heads.add_roi_2mlp_head", "ROI_XFORM_METHOD": "RoIAlign"},
            "MRCNN": {"ROI_MASK_HEAD": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs"},
        }, embedded=False)


def test_architecture_round_trips_through_dict():
    for arch in REFERENCE_ARCHITECTURES.values():
        assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


# --------------------------------------------------------------------------- #
# blobs -> Architecture
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", list(REFERENCE_ARCHITECTURES))
def test_blobs_imply_the_reference_architecture(golden_dir, name):
    inferred = architecture_from_blobs(inventory_blobs(golden_dir, name, momentum=name in DETECTION))
    assert inferred == REFERENCE_ARCHITECTURES[name]


def test_freeze_at_follows_the_momentum_blobs(golden_dir):
    blobs = inventory_blobs(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn")
    assert architecture_from_blobs(blobs).freeze_at == 2
    for k in [k for k in blobs if k.startswith("res3_") and k.endswith("_momentum")]:
        del blobs[k]
    assert architecture_from_blobs(blobs).freeze_at == 3
    no_momentum = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    assert architecture_from_blobs(no_momentum).freeze_at == 2  # Detectron's default


def test_blobs_of_no_known_network_are_refused():
    with pytest.raises(CheckpointError, match="conv1_gn_s"):
        architecture_from_blobs({"fc_w": np.zeros((2, 2), np.float32)})


def test_unsupported_depth_is_refused(golden_dir):
    blobs = inventory_blobs(golden_dir, "ImageNet_R-50-GN")
    blobs["res4_6_branch2a_w"] = blobs["res4_5_branch2a_w"]
    with pytest.raises(CheckpointError, match="7 res4 blocks"):
        architecture_from_blobs(blobs)


# --------------------------------------------------------------------------- #
# architecture_from_checkpoint
# --------------------------------------------------------------------------- #


def test_checkpoint_prefers_the_embedded_cfg(golden_dir):
    name = "e2e_mask_rcnn_R-50-FPN_2x_gn"
    arch, how = architecture_from_checkpoint(load_golden_cfg(golden_dir, name), inventory_blobs(golden_dir, name))
    assert arch == REFERENCE_ARCHITECTURES[name] and how == "embedded cfg"


def test_checkpoint_without_cfg_is_inferred(golden_dir):
    arch, how = architecture_from_checkpoint(None, inventory_blobs(golden_dir, "ImageNet_R-101-GN"))
    assert arch == REFERENCE_ARCHITECTURES["ImageNet_R-101-GN"] and "inferred" in how


@pytest.mark.parametrize("cfg_name,blobs_name,field", [
    ("e2e_mask_rcnn_R-101-FPN_2x_gn", "e2e_mask_rcnn_R-50-FPN_2x_gn", "depth"),
    ("e2e_mask_rcnn_R-50-FPN_2x", "e2e_mask_rcnn_R-50-FPN_2x_gn", "norm"),
    ("e2e_mask_rcnn_R-50-FPN_2x_gn", "ImageNet_R-50-GN", "kind"),
])
def test_cfg_and_blobs_disagreeing_is_an_error_naming_both(golden_dir, cfg_name, blobs_name, field):
    cfg = load_golden_cfg(golden_dir, cfg_name)
    with pytest.raises(CheckpointError, match=f"says {field}=.* but the blobs say {field}="):
        architecture_from_checkpoint(cfg, inventory_blobs(golden_dir, blobs_name))


def test_num_classes_disagreement_is_an_error(golden_dir):
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn")
    cfg["MODEL"]["NUM_CLASSES"] = 2
    with pytest.raises(CheckpointError, match="num_classes=2 but the blobs say num_classes=81"):
        architecture_from_checkpoint(cfg, inventory_blobs(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x_gn"))


def test_config_file_path_is_used_when_there_is_no_cfg(golden_dir, tmp_path):
    config = tmp_path / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"
    config.write_text(
        "MODEL:\n  TYPE: generalized_rcnn\n  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body\n  NUM_CLASSES: 81\n"
        "  FASTER_RCNN: True\n  MASK_ON: True\n"
        "FPN:\n  FPN_ON: True\n  MULTILEVEL_ROIS: True\n  MULTILEVEL_RPN: True\n  USE_GN: True\n"
        "RESNETS:\n  STRIDE_1X1: False\n  TRANS_FUNC: bottleneck_gn_transformation\n"
        "  STEM_FUNC: basic_gn_stem\n  SHORTCUT_FUNC: basic_gn_shortcut\n"
        "FAST_RCNN:\n  ROI_BOX_HEAD: fast_rcnn_heads.add_roi_Xconv1fc_gn_head\n  ROI_XFORM_METHOD: RoIAlign\n"
        "  ROI_XFORM_RESOLUTION: 7\n  ROI_XFORM_SAMPLING_RATIO: 2\n"
        "MRCNN:\n  ROI_MASK_HEAD: mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn\n  RESOLUTION: 28\n"
        "  ROI_XFORM_METHOD: RoIAlign\n  ROI_XFORM_RESOLUTION: 14\n  ROI_XFORM_SAMPLING_RATIO: 2\n  DILATION: 1\n"
        "TRAIN:\n  WEIGHTS: https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/47261647/R-50-GN.pkl\n"
        "TEST:\n  SCALE: 800\n  MAX_SIZE: 1333\n  NMS: 0.5\n  RPN_PRE_NMS_TOP_N: 1000\n  RPN_POST_NMS_TOP_N: 1000\n"
    )
    name = "e2e_mask_rcnn_R-50-FPN_2x_gn"
    arch, how = architecture_from_checkpoint(None, inventory_blobs(golden_dir, name), config_path=str(config))
    assert arch == REFERENCE_ARCHITECTURES[name] and str(config) in how
    # the same detector config next to its ImageNet backbone: a classifier with the config's body settings
    arch, how = architecture_from_checkpoint(None, inventory_blobs(golden_dir, "ImageNet_R-50-GN"),
                                             config_path=str(config))
    assert arch == REFERENCE_ARCHITECTURES["ImageNet_R-50-GN"] and "classifier" in how


def test_old_cfg_test_scales_tuple_is_read(golden_dir):
    """Detectron's cfg before March 2018 (the 12_2017 models) had TEST.SCALES = (800,)."""
    cfg = load_golden_cfg(golden_dir, "e2e_mask_rcnn_R-50-FPN_2x")
    del cfg["TEST"]["SCALE"]
    cfg["TEST"]["SCALES"] = (800,)
    assert architecture_from_cfg(cfg).test.scale == 800
    cfg["TEST"]["SCALES"] = (600, 800)
    with pytest.raises(CheckpointError, match="multi-scale"):
        architecture_from_cfg(cfg)
