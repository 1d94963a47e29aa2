"""The Architecture a Detectron cfg describes (the one embedded in a `.pkl`, or a `--config`
file merged over Detectron's defaults), and the test settings a user may override after
conversion (`--opts KEY VALUE`, as Detectron's merge_cfg_from_list).  A setting gnconvert
does not implement is an error naming the key, never a silent approximation."""
from __future__ import annotations

import ast
import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from gnconvert.architecture.record import (
    BBOX_REG_WEIGHTS,
    BBOX_XFORM_CLIP,
    PIXEL_MEANS,
    Architecture,
    BoxHeadType,
    Kind,
    MaskHeadType,
    Norm,
    TestSettings,
)
from gnconvert.checkpoint.detectron_cfg import check_key
from gnconvert.errors import CheckpointError, UsageError

# Detectron's core/config.py defaults for every key read below.  A saved cfg is a
# full dump, but a `--config` file only lists what it overrides, and an older
# Detectron's dump may predate a key: both fall back to these values.
DETECTRON_DEFAULTS: Dict[str, Any] = {
    "MODEL": {
        "TYPE": "", "CONV_BODY": "", "NUM_CLASSES": -1, "CLS_AGNOSTIC_BBOX_REG": False,
        "BBOX_REG_WEIGHTS": BBOX_REG_WEIGHTS, "FASTER_RCNN": False, "MASK_ON": False,
        "KEYPOINTS_ON": False, "RPN_ONLY": False,
    },
    "RESNETS": {
        "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STRIDE_1X1": True,
        "TRANS_FUNC": "bottleneck_transformation", "STEM_FUNC": "basic_bn_stem",
        "SHORTCUT_FUNC": "basic_bn_shortcut", "RES5_DILATION": 1,
    },
    "GROUP_NORM": {"DIM_PER_GP": -1, "NUM_GROUPS": 32, "EPSILON": 1e-5},
    "FPN": {
        "FPN_ON": False, "DIM": 256, "COARSEST_STRIDE": 32, "MULTILEVEL_ROIS": False,
        "ROI_CANONICAL_SCALE": 224, "ROI_CANONICAL_LEVEL": 4, "ROI_MAX_LEVEL": 5, "ROI_MIN_LEVEL": 2,
        "MULTILEVEL_RPN": False, "RPN_MAX_LEVEL": 6, "RPN_MIN_LEVEL": 2,
        "RPN_ASPECT_RATIOS": (0.5, 1, 2), "RPN_ANCHOR_START_SIZE": 32,
        "EXTRA_CONV_LEVELS": False, "USE_GN": False,
    },
    "FAST_RCNN": {
        "ROI_BOX_HEAD": "", "MLP_HEAD_DIM": 1024, "CONV_HEAD_DIM": 256, "NUM_STACKED_CONVS": 4,
        "ROI_XFORM_METHOD": "RoIPoolF", "ROI_XFORM_SAMPLING_RATIO": 0, "ROI_XFORM_RESOLUTION": 14,
    },
    "MRCNN": {
        "ROI_MASK_HEAD": "", "RESOLUTION": 14, "ROI_XFORM_METHOD": "RoIAlign", "ROI_XFORM_RESOLUTION": 7,
        "ROI_XFORM_SAMPLING_RATIO": 0, "DIM_REDUCED": 256, "DILATION": 2, "UPSAMPLE_RATIO": 1,
        "USE_FC_OUTPUT": False, "CLS_SPECIFIC_MASK": True, "THRESH_BINARIZE": 0.5,
    },
    "RETINANET": {"RETINANET_ON": False},
    "TRAIN": {"FREEZE_AT": 2, "WEIGHTS": ""},
    "TEST": {
        "SCALE": 600, "MAX_SIZE": 1000, "NMS": 0.3, "BBOX_REG": True, "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "RPN_MIN_SIZE": 0,
        "DETECTIONS_PER_IM": 100, "SCORE_THRESH": 0.05,
        "BBOX_AUG": {"ENABLED": False}, "MASK_AUG": {"ENABLED": False}, "KPS_AUG": {"ENABLED": False},
        "SOFT_NMS": {"ENABLED": False}, "BBOX_VOTE": {"ENABLED": False},
    },
    "PIXEL_MEANS": PIXEL_MEANS,
    "BBOX_XFORM_CLIP": BBOX_XFORM_CLIP,
}

_BODIES = {"FPN.add_fpn_ResNet50_conv5_body": 50, "FPN.add_fpn_ResNet101_conv5_body": 101}
_NORM_FUNCS = {
    ("bottleneck_gn_transformation", "basic_gn_stem", "basic_gn_shortcut"): Norm.GN,
    ("bottleneck_transformation", "basic_bn_stem", "basic_bn_shortcut"): Norm.AFFINE,
}
_BOX_HEADS = {
    "fast_rcnn_heads.add_roi_Xconv1fc_gn_head": BoxHeadType.CONVS_FC_GN,
    "fast_rcnn_heads.add_roi_2mlp_head": BoxHeadType.TWO_FC,
}
_MASK_HEADS = {
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn": MaskHeadType.CONVS_GN,
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs": MaskHeadType.CONVS,
}
SUPPORTED = "gnconvert handles Mask R-CNN R-50/R-101-FPN with GN or frozen-BN (AffineChannel) bodies"


def _merge(defaults: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _decode(value: Any) -> Any:
    """Detectron literal-evals string values of a YAML config (e.g. "(800,)")."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


class _Cfg:
    """Dotted look-ups into a cfg dict merged over Detectron's defaults."""

    def __init__(self, cfg: Dict[str, Any]):
        self._cfg = _merge(DETECTRON_DEFAULTS, cfg)

    def __call__(self, dotted: str) -> Any:
        node: Any = self._cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointError(f"cfg has no {dotted}; pass a Detectron config with --config")
            node = node[part]
        return _decode(node)

    def require(self, dotted: str, allowed: Dict[Any, Any], what: str) -> Any:
        value = self(dotted)
        key = value if not isinstance(value, float) or not value.is_integer() else int(value)
        if key not in allowed:
            choices = ", ".join(repr(k) for k in allowed)
            raise CheckpointError(f"cfg {dotted}={value!r}: {what} is not supported ({choices}); {SUPPORTED}")
        return allowed[key]

    def expect(self, dotted: str, wanted: Any, what: str) -> None:
        value = self(dotted)
        if value != wanted:
            raise CheckpointError(f"cfg {dotted}={value!r}: {what} is not supported (only {wanted!r}); {SUPPORTED}")

    def has(self, dotted: str, cfg: Dict[str, Any]) -> bool:
        node: Any = cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True


def _floats(value: Any, n: int, dotted: str) -> Tuple[float, ...]:
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    if flat.size != n:
        raise CheckpointError(f"cfg {dotted} has {flat.size} values, expected {n}")
    return tuple(float(v) for v in flat)


def _test_scale(c: _Cfg, cfg: Dict[str, Any]) -> int:
    """TEST.SCALE, or its predecessor TEST.SCALES (a tuple) in cfgs saved before March 2018."""
    if c.has("TEST.SCALE", cfg) or not c.has("TEST.SCALES", cfg):
        return int(c("TEST.SCALE"))
    scales = tuple(c("TEST.SCALES"))
    if len(scales) != 1:
        raise CheckpointError(f"cfg TEST.SCALES={scales!r}: multi-scale testing is not supported; {SUPPORTED}")
    return int(scales[0])


def architecture_from_cfg(cfg: Dict[str, Any], embedded: bool = True) -> Architecture:
    """The Architecture a Detectron cfg describes; settings we do not implement are errors.

    `embedded` means `cfg` is the one saved inside a `.pkl`: then, like Detectron's
    `configure_bbox_reg_weights`, a cfg without MODEL.BBOX_REG_WEIGHTS (a model trained
    before the key existed) decodes boxes with weights (1, 1, 1, 1).
    """
    c = _Cfg(cfg)
    c.expect("MODEL.TYPE", "generalized_rcnn", "MODEL.TYPE")
    depth = c.require("MODEL.CONV_BODY", _BODIES, "this body")
    c.expect("MODEL.MASK_ON", True, "a model without masks")
    c.expect("MODEL.FASTER_RCNN", True, "a model without an RPN")
    c.expect("MODEL.RPN_ONLY", False, "an RPN-only model")
    c.expect("MODEL.KEYPOINTS_ON", False, "keypoint R-CNN")
    c.expect("MODEL.CLS_AGNOSTIC_BBOX_REG", False, "class-agnostic box regression")
    c.expect("RETINANET.RETINANET_ON", False, "RetinaNet")
    c.expect("RESNETS.NUM_GROUPS", 1, "ResNeXt (RESNETS.NUM_GROUPS)")
    c.expect("RESNETS.WIDTH_PER_GROUP", 64, "RESNETS.WIDTH_PER_GROUP")
    c.expect("RESNETS.RES5_DILATION", 1, "a dilated res5")
    funcs = (c("RESNETS.TRANS_FUNC"), c("RESNETS.STEM_FUNC"), c("RESNETS.SHORTCUT_FUNC"))
    if funcs not in _NORM_FUNCS:
        raise CheckpointError(f"cfg RESNETS TRANS/STEM/SHORTCUT_FUNC={funcs}: this mix is not supported; {SUPPORTED}")
    norm = _NORM_FUNCS[funcs]
    c.expect("GROUP_NORM.DIM_PER_GP", -1, "GROUP_NORM.DIM_PER_GP")
    c.expect("FPN.FPN_ON", True, "a body without FPN")
    c.expect("FPN.MULTILEVEL_RPN", True, "single-level RPN")
    c.expect("FPN.MULTILEVEL_ROIS", True, "single-level RoIs")
    c.expect("FPN.EXTRA_CONV_LEVELS", False, "FPN.EXTRA_CONV_LEVELS")
    for key, level in (("RPN_MIN_LEVEL", 2), ("RPN_MAX_LEVEL", 6), ("ROI_MIN_LEVEL", 2), ("ROI_MAX_LEVEL", 5)):
        c.expect(f"FPN.{key}", level, f"FPN.{key}")
    box_head = c.require("FAST_RCNN.ROI_BOX_HEAD", _BOX_HEADS, "this box head")
    c.expect("FAST_RCNN.ROI_XFORM_METHOD", "RoIAlign", "RoI pooling other than RoIAlign")
    mask_head = c.require("MRCNN.ROI_MASK_HEAD", _MASK_HEADS, "this mask head")
    c.expect("MRCNN.ROI_XFORM_METHOD", "RoIAlign", "RoI pooling other than RoIAlign")
    c.expect("MRCNN.CLS_SPECIFIC_MASK", True, "class-agnostic masks")
    c.expect("MRCNN.USE_FC_OUTPUT", False, "an fc mask predictor")
    c.expect("MRCNN.UPSAMPLE_RATIO", 1, "mask logit upsampling")
    c.expect("MRCNN.DILATION", 1, "a dilated mask head")
    mask_roi = int(c("MRCNN.ROI_XFORM_RESOLUTION"))
    c.expect("MRCNN.RESOLUTION", 2 * mask_roi, "a mask resolution other than twice the RoI size")
    c.expect("TEST.BBOX_REG", True, "testing without box regression")
    for aug in ("BBOX_AUG", "MASK_AUG", "KPS_AUG", "SOFT_NMS", "BBOX_VOTE"):
        c.expect(f"TEST.{aug}.ENABLED", False, f"TEST.{aug}")

    if embedded and not c.has("MODEL.BBOX_REG_WEIGHTS", cfg):
        bbox_reg_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # Detectron's configure_bbox_reg_weights
    else:
        bbox_reg_weights = _floats(c("MODEL.BBOX_REG_WEIGHTS"), 4, "MODEL.BBOX_REG_WEIGHTS")
    freeze_at = int(c("TRAIN.FREEZE_AT"))
    if freeze_at not in (0, 2, 3, 4, 5):
        raise CheckpointError(f"cfg TRAIN.FREEZE_AT={freeze_at}: Detectron allows 0, 2, 3, 4 or 5")
    test = TestSettings(
        scale=_test_scale(c, cfg),
        max_size=int(c("TEST.MAX_SIZE")),
        nms=float(c("TEST.NMS")),
        score_thresh=float(c("TEST.SCORE_THRESH")),
        detections_per_im=int(c("TEST.DETECTIONS_PER_IM")),
        rpn_pre_nms_top_n=int(c("TEST.RPN_PRE_NMS_TOP_N")),
        rpn_post_nms_top_n=int(c("TEST.RPN_POST_NMS_TOP_N")),
        rpn_nms_thresh=float(c("TEST.RPN_NMS_THRESH")),
        rpn_min_size=float(c("TEST.RPN_MIN_SIZE")),
        mask_thresh_binarize=float(c("MRCNN.THRESH_BINARIZE")),
    )
    return Architecture(
        depth=depth,
        norm=norm,
        gn_groups=int(c("GROUP_NORM.NUM_GROUPS")),
        gn_eps=float(c("GROUP_NORM.EPSILON")),
        stride_in_1x1=bool(c("RESNETS.STRIDE_1X1")),
        fpn_dim=int(c("FPN.DIM")),
        fpn_norm=Norm.GN if c("FPN.USE_GN") else Norm.NONE,
        coarsest_stride=int(c("FPN.COARSEST_STRIDE")),
        roi_canonical_scale=int(c("FPN.ROI_CANONICAL_SCALE")),
        roi_canonical_level=int(c("FPN.ROI_CANONICAL_LEVEL")),
        anchor_start_size=int(c("FPN.RPN_ANCHOR_START_SIZE")),
        aspect_ratios=tuple(float(r) for r in c("FPN.RPN_ASPECT_RATIOS")),
        box_head=box_head,
        box_head_conv_dim=int(c("FAST_RCNN.CONV_HEAD_DIM")),
        box_head_num_convs=int(c("FAST_RCNN.NUM_STACKED_CONVS")),
        mlp_head_dim=int(c("FAST_RCNN.MLP_HEAD_DIM")),
        box_roi_resolution=int(c("FAST_RCNN.ROI_XFORM_RESOLUTION")),
        box_sampling_ratio=int(c("FAST_RCNN.ROI_XFORM_SAMPLING_RATIO")),
        mask_head=mask_head,
        mask_dim=int(c("MRCNN.DIM_REDUCED")),
        mask_resolution=2 * mask_roi,
        mask_roi_resolution=mask_roi,
        mask_sampling_ratio=int(c("MRCNN.ROI_XFORM_SAMPLING_RATIO")),
        num_classes=int(c("MODEL.NUM_CLASSES")),
        pixel_means=_floats(c("PIXEL_MEANS"), 3, "PIXEL_MEANS"),
        bbox_reg_weights=bbox_reg_weights,
        bbox_xform_clip=float(np.asarray(c("BBOX_XFORM_CLIP"), dtype=np.float64).reshape(-1)[0]),
        test=test,
        freeze_at=freeze_at,
        pretrained_on_imagenet=bool(c("TRAIN.WEIGHTS")),
    )


# --------------------------------------------------------------------------- #
# Test-time overrides (--opts KEY VALUE, as Detectron's merge_cfg_from_list)
# --------------------------------------------------------------------------- #

# Detectron keys a user may change after conversion -> (TestSettings field, type, lowest value)
TEST_OVERRIDES = {
    "TEST.SCALE": ("scale", int, 1), "TEST.MAX_SIZE": ("max_size", int, 1), "TEST.NMS": ("nms", float, 0.0),
    "TEST.SCORE_THRESH": ("score_thresh", float, 0.0), "TEST.DETECTIONS_PER_IM": ("detections_per_im", int, 0),
    "TEST.RPN_PRE_NMS_TOP_N": ("rpn_pre_nms_top_n", int, 0), "TEST.RPN_POST_NMS_TOP_N": ("rpn_post_nms_top_n", int, 1),
    "TEST.RPN_NMS_THRESH": ("rpn_nms_thresh", float, 0.0), "TEST.RPN_MIN_SIZE": ("rpn_min_size", float, 0.0),
    "MRCNN.THRESH_BINARIZE": ("mask_thresh_binarize", float, 0.0),
}


def with_overrides(arch: Architecture, opts) -> Architecture:
    """`arch` with Detectron test settings replaced: opts is a sequence of (KEY, VALUE) strings.

    Keys are checked as Detectron checks them (unknown, renamed and deprecated keys); known
    keys that the weights fix (the architecture) cannot be overridden."""
    changes: Dict[str, Any] = {}
    for key, text in opts:
        where = f"--opts {key} {text}"
        if not check_key(key, where):
            continue
        if key not in TEST_OVERRIDES:
            raise UsageError(f"{where}: {key} is part of the model, fixed by its weights; only these test settings "
                             f"can be overridden: {', '.join(TEST_OVERRIDES)}")
        name, kind, lowest = TEST_OVERRIDES[key]
        value = _decode(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise UsageError(f"{where}: {key} takes {'an integer' if kind is int else 'a number'}, not {text!r}")
        if value < lowest:
            raise UsageError(f"{where}: {key} must be at least {lowest}")
        changes[name] = kind(value)
    if not changes:
        return arch
    if arch.kind != Kind.MASK_RCNN:
        raise UsageError("--opts changes test settings of Mask R-CNN models; this one is an ImageNet classifier")
    return dataclasses.replace(arch, test=dataclasses.replace(arch.test, **changes))
