"""The architecture record: everything about a Detectron model that changes numbers.

Read once from a checkpoint's embedded cfg (cross-checked against its blobs, see
`gnconvert.name_mapping`), it travels with the converted weights and is the only
input the model builder and the inference path take.  Defaults are Detectron's
`core/config.py` values for the 04_2018 GN and 12_2017 BN* Mask R-CNN configs.
"""
from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import CheckpointError, UsageError

GN = "GN"
AFFINE = "AffineChannel"  # frozen BN folded into a per-channel scale and bias


@dataclass(frozen=True)
class TestSettings:
    """Detectron's TEST.* (and MRCNN.THRESH_BINARIZE) values in force at inference."""

    scale: int = 800
    max_size: int = 1333
    nms: float = 0.5
    score_thresh: float = 0.05
    detections_per_im: int = 100
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0
    mask_thresh_binarize: float = 0.5


@dataclass(frozen=True)
class Architecture:
    """A GN / BN* Mask R-CNN with a ResNet-FPN body, or an ImageNet ResNet classifier."""

    kind: str = "mask_rcnn"  # "mask_rcnn" | "classifier"
    depth: int = 50  # 50 | 101
    norm: str = GN  # GN | AFFINE, for the ResNet body
    gn_groups: int = 32
    gn_eps: float = 1e-5
    stride_in_1x1: bool = False  # True for the MSRA BN* bodies
    # FPN
    fpn_dim: int = 256
    fpn_norm: str = GN  # GN | "none" (BN* FPN convs carry biases instead)
    coarsest_stride: int = 32
    rpn_min_level: int = 2
    rpn_max_level: int = 6
    roi_min_level: int = 2
    roi_max_level: int = 5
    roi_canonical_scale: int = 224
    roi_canonical_level: int = 4
    anchor_start_size: int = 32
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    # box head
    box_head: str = "4conv1fc_gn"  # "4conv1fc_gn" | "2fc"
    box_head_conv_dim: int = 256
    box_head_num_convs: int = 4
    mlp_head_dim: int = 1024
    box_roi_resolution: int = 7
    box_sampling_ratio: int = 2
    # mask head
    mask_head: str = "4conv_gn"  # "4conv_gn" | "4conv"
    mask_dim: int = 256
    mask_resolution: int = 28
    mask_roi_resolution: int = 14
    mask_sampling_ratio: int = 2
    # data and decoding
    num_classes: int = 81  # background + 80 COCO classes
    pixel_means: Tuple[float, float, float] = (102.9801, 115.9465, 122.7717)  # BGR
    bbox_reg_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    bbox_xform_clip: float = math.log(1000.0 / 16.0)
    test: TestSettings = field(default_factory=TestSettings)
    # training provenance: decides which blobs a checkpoint carries besides the
    # parameters (optimizer momentum for trained ones, the unused ImageNet fc)
    freeze_at: int = 2  # TRAIN.FREEZE_AT: conv1 .. res{freeze_at} were not trained
    pretrained_on_imagenet: bool = True  # TRAIN.WEIGHTS was an ImageNet classifier

    @property
    def num_anchors(self) -> int:
        return len(self.aspect_ratios)

    @property
    def blocks_per_stage(self) -> Tuple[int, int, int, int]:
        return {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[self.depth]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Architecture":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(unknown)}")
        test = TestSettings(**d.pop("test", {}))
        for k in ("aspect_ratios", "pixel_means", "bbox_reg_weights"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(test=test, **d)


def gn_r50_fpn() -> Architecture:
    """e2e_mask_rcnn_R-50-FPN_2x_gn (48616381)."""
    return Architecture()


def bn_r50_fpn() -> Architecture:
    """e2e_mask_rcnn_R-50-FPN_2x (35859007): frozen-BN body, 2-fc box head, no GN."""
    return Architecture(norm=AFFINE, stride_in_1x1=True, fpn_norm="none", box_head="2fc", mask_head="4conv")


def classifier_r50_gn() -> Architecture:
    """ImageNet R-50-GN (47261647): the GN body plus the `pred` fc, no detection heads."""
    return Architecture(kind="classifier", num_classes=1000, freeze_at=0, pretrained_on_imagenet=False)


# What Detectron's published configs decode to, by config (inventory) name; the
# tests check each against the real embedded cfg text or the blob inventory.
REFERENCE_ARCHITECTURES: Dict[str, Architecture] = {
    "e2e_mask_rcnn_R-50-FPN_2x_gn": gn_r50_fpn(),
    "e2e_mask_rcnn_R-101-FPN_2x_gn": dataclasses.replace(gn_r50_fpn(), depth=101),
    "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn": dataclasses.replace(gn_r50_fpn(), freeze_at=0,
                                                                pretrained_on_imagenet=False),
    "e2e_mask_rcnn_R-50-FPN_2x": bn_r50_fpn(),
    "e2e_mask_rcnn_R-101-FPN_2x": dataclasses.replace(bn_r50_fpn(), depth=101),
    "ImageNet_R-50-GN": classifier_r50_gn(),
    "ImageNet_R-101-GN": dataclasses.replace(classifier_r50_gn(), depth=101),
}


# --------------------------------------------------------------------------- #
# From Detectron's cfg
# --------------------------------------------------------------------------- #

# Detectron's core/config.py defaults for every key read below.  A saved cfg is a
# full dump, but a `--config` file only lists what it overrides, and an older
# Detectron's dump may predate a key: both fall back to these values.
DETECTRON_DEFAULTS: Dict[str, Any] = {
    "MODEL": {
        "TYPE": "", "CONV_BODY": "", "NUM_CLASSES": -1, "CLS_AGNOSTIC_BBOX_REG": False,
        "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0), "FASTER_RCNN": False, "MASK_ON": False,
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
    "PIXEL_MEANS": (102.9801, 115.9465, 122.7717),
    "BBOX_XFORM_CLIP": math.log(1000.0 / 16.0),
}

_BODIES = {"FPN.add_fpn_ResNet50_conv5_body": 50, "FPN.add_fpn_ResNet101_conv5_body": 101}
_NORM_FUNCS = {
    ("bottleneck_gn_transformation", "basic_gn_stem", "basic_gn_shortcut"): GN,
    ("bottleneck_transformation", "basic_bn_stem", "basic_bn_shortcut"): AFFINE,
}
_BOX_HEADS = {
    "fast_rcnn_heads.add_roi_Xconv1fc_gn_head": "4conv1fc_gn",
    "fast_rcnn_heads.add_roi_2mlp_head": "2fc",
}
_MASK_HEADS = {
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn": "4conv_gn",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs": "4conv",
}
_SUPPORTED = "gnconvert handles Mask R-CNN R-50/R-101-FPN with GN or frozen-BN (AffineChannel) bodies"


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
            raise CheckpointError(f"cfg {dotted}={value!r}: {what} is not supported ({choices}); {_SUPPORTED}")
        return allowed[key]

    def expect(self, dotted: str, wanted: Any, what: str) -> None:
        value = self(dotted)
        if value != wanted:
            raise CheckpointError(f"cfg {dotted}={value!r}: {what} is not supported (only {wanted!r}); {_SUPPORTED}")

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
        raise CheckpointError(f"cfg TEST.SCALES={scales!r}: multi-scale testing is not supported; {_SUPPORTED}")
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
        raise CheckpointError(f"cfg RESNETS TRANS/STEM/SHORTCUT_FUNC={funcs}: this mix is not supported; {_SUPPORTED}")
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
        bbox_reg_weights = (1.0, 1.0, 1.0, 1.0)  # Detectron's configure_bbox_reg_weights
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
        kind="mask_rcnn",
        depth=depth,
        norm=norm,
        gn_groups=int(c("GROUP_NORM.NUM_GROUPS")),
        gn_eps=float(c("GROUP_NORM.EPSILON")),
        stride_in_1x1=bool(c("RESNETS.STRIDE_1X1")),
        fpn_dim=int(c("FPN.DIM")),
        fpn_norm=GN if c("FPN.USE_GN") else "none",
        coarsest_stride=int(c("FPN.COARSEST_STRIDE")),
        rpn_min_level=2,
        rpn_max_level=6,
        roi_min_level=2,
        roi_max_level=5,
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
    from .detectron_cfg import check_key

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
    if arch.kind != "mask_rcnn":
        raise UsageError("--opts changes test settings of Mask R-CNN models; this one is an ImageNet classifier")
    return dataclasses.replace(arch, test=dataclasses.replace(arch.test, **changes))


# --------------------------------------------------------------------------- #
# From the blobs alone
# --------------------------------------------------------------------------- #

_DEPTH_BY_RES4_BLOCKS = {6: 50, 23: 101}


def _count_blocks(blobs: Mapping[str, Any], stage: int) -> int:
    n = 0
    while f"res{stage}_{n}_branch2a_w" in blobs:
        n += 1
    return n


def _shape(blobs: Mapping[str, Any], name: str) -> Tuple[int, ...]:
    return tuple(int(d) for d in np.shape(blobs[name]))


def _infer_freeze_at(blobs: Mapping[str, Any]) -> int:
    """FREEZE_AT from which body blobs carry optimizer momentum (2 if none do)."""
    if "conv1_w_momentum" in blobs:
        return 0
    for stage in (3, 4, 5):
        if f"res{stage}_0_branch2a_w_momentum" in blobs:
            return stage - 1
    return 5 if any(k.endswith("_momentum") for k in blobs) else 2


def architecture_from_blobs(blobs: Mapping[str, Any]) -> Architecture:
    """The Architecture the blob names and shapes imply; fails if they imply none we build.

    What blobs cannot show keeps its convention: GN bodies stride on the 3x3
    (STRIDE_1X1 False), MSRA frozen-BN bodies on the 1x1; Detectron's default TEST
    settings of the 2x configs; box weights (10, 10, 5, 5).
    """
    if "conv1_gn_s" in blobs:
        norm = GN
    elif "res_conv1_bn_s" in blobs:
        norm = AFFINE
    else:
        raise CheckpointError("blobs have neither conv1_gn_s nor res_conv1_bn_s: not a Detectron ResNet; "
                              "pass the model's Detectron config with --config")
    res4 = _count_blocks(blobs, 4)
    if res4 not in _DEPTH_BY_RES4_BLOCKS:
        raise CheckpointError(f"blobs have {res4} res4 blocks: only ResNet-50 (6) and ResNet-101 (23) are supported")
    depth = _DEPTH_BY_RES4_BLOCKS[res4]
    body = dict(depth=depth, norm=norm, stride_in_1x1=norm == AFFINE)

    detection_markers = ("conv_rpn_fpn2_w", "cls_score_w", "fc6_w", "fpn_res5_2_sum_w")
    if not any(m in blobs for m in detection_markers):
        if "pred_w" not in blobs:
            raise CheckpointError("blobs hold a ResNet body but neither detection heads nor an ImageNet "
                                  "`pred` fc; nothing to convert")
        return Architecture(kind="classifier", num_classes=_shape(blobs, "pred_w")[0], freeze_at=0,
                            pretrained_on_imagenet=False, **body)

    missing = [m for m in ("fpn_inner_res5_2_sum_w", "cls_score_w", "fc6_w", "conv5_mask_w",
                           "rpn_cls_logits_fpn2_w") if m not in blobs]
    if missing:
        raise CheckpointError(f"blobs lack {', '.join(missing)}: not an FPN Mask R-CNN; {_SUPPORTED}")
    fpn_norm = GN if "fpn_inner_res5_2_sum_gn_s" in blobs else "none"
    fpn_dim = _shape(blobs, "fpn_inner_res5_2_sum_w")[0]
    num_anchors = _shape(blobs, "rpn_cls_logits_fpn2_w")[0]
    if num_anchors != 3:
        raise CheckpointError(f"blob rpn_cls_logits_fpn2_w has {num_anchors} anchors per place: "
                              "only Detectron's 3 aspect ratios (0.5, 1, 2) are supported")

    heads: Dict[str, Any] = {}
    if "head_conv1_w" in blobs:
        n = 0
        while f"head_conv{n + 1}_w" in blobs:
            n += 1
        conv_dim = _shape(blobs, "head_conv1_w")[0]
        heads.update(box_head="4conv1fc_gn", box_head_num_convs=n, box_head_conv_dim=conv_dim)
        fc6_in = conv_dim
    elif "fc7_w" in blobs:
        heads.update(box_head="2fc")
        fc6_in = fpn_dim
    else:
        raise CheckpointError(f"blobs have neither head_conv1_w nor fc7_w: unknown box head; {_SUPPORTED}")
    fc6 = _shape(blobs, "fc6_w")
    resolution = int(round(math.sqrt(fc6[1] / fc6_in))) if len(fc6) == 2 else 0
    if resolution * resolution * fc6_in != (fc6[1] if len(fc6) == 2 else -1):
        raise CheckpointError(f"blob fc6_w has shape {fc6}: not {fc6_in} x R x R RoI features")

    if "_mask_fcn1_w" in blobs:
        mask_head, mask_first = "4conv_gn", "_mask_fcn1_w"
    elif "_[mask]_fcn1_w" in blobs:
        mask_head, mask_first = "4conv", "_[mask]_fcn1_w"
    else:
        raise CheckpointError(f"blobs have neither _mask_fcn1_w nor _[mask]_fcn1_w: unknown mask head; {_SUPPORTED}")
    num_classes = _shape(blobs, "cls_score_w")[0]
    return Architecture(
        kind="mask_rcnn",
        fpn_norm=fpn_norm,
        fpn_dim=fpn_dim,
        mlp_head_dim=fc6[0],
        box_roi_resolution=resolution,
        mask_head=mask_head,
        mask_dim=_shape(blobs, mask_first)[0],
        num_classes=num_classes,
        freeze_at=_infer_freeze_at(blobs),
        pretrained_on_imagenet="pred_w" in blobs or "fc1000_w" in blobs,
        **heads,
        **body,
    )


# Fields the blobs can show; the cfg must agree with them.
_VISIBLE_IN_BLOBS = {
    "mask_rcnn": ("kind", "depth", "norm", "fpn_norm", "fpn_dim", "box_head", "box_head_num_convs",
                  "box_head_conv_dim", "mlp_head_dim", "box_roi_resolution", "mask_head", "mask_dim",
                  "num_classes", "num_anchors"),
}


def _cross_check_field(from_cfg: Architecture, from_blobs: Architecture, name: str, source: str) -> None:
    a, b = getattr(from_cfg, name), getattr(from_blobs, name)
    if a != b:
        raise CheckpointError(f"{source} says {name}={a!r} but the blobs say {name}={b!r}; "
                              "the checkpoint is inconsistent, pass the right config with --config")


def _cross_check(from_cfg: Architecture, from_blobs: Architecture, source: str) -> None:
    fields = ("kind",) if from_blobs.kind != from_cfg.kind else _VISIBLE_IN_BLOBS[from_cfg.kind]
    for name in fields:
        if name in ("box_head_num_convs", "box_head_conv_dim") and from_cfg.box_head != "4conv1fc_gn":
            continue
        _cross_check_field(from_cfg, from_blobs, name, source)


def architecture_from_checkpoint(
    cfg: Optional[Dict[str, Any]], blobs: Mapping[str, Any], config_path: Optional[str] = None
) -> Tuple[Architecture, str]:
    """The Architecture of a checkpoint and how it was found.

    In order: the cfg embedded in the `.pkl`, else a Detectron YAML config file
    (`--config`), else the blob names and shapes.  A cfg is cross-checked against
    the blobs; any disagreement is an error, never a guess.
    """
    from_blobs = None
    if cfg is not None or config_path is not None:
        if cfg is not None:
            arch, how, source = architecture_from_cfg(cfg, embedded=True), "embedded cfg", "the embedded cfg"
        else:
            from .detectron_cfg import load_config_file

            arch = architecture_from_cfg(load_config_file(config_path), embedded=False)
            how, source = f"config file {config_path}", f"config file {config_path}"
        from_blobs = architecture_from_blobs(blobs)
        if cfg is None and from_blobs.kind == "classifier" and arch.kind == "mask_rcnn":
            # an ImageNet backbone with the config of a detector trained from it:
            # the config supplies what blobs cannot show (stride placement, GN eps)
            for name in ("depth", "norm"):
                _cross_check_field(arch, from_blobs, name, source)
            arch = dataclasses.replace(from_blobs, stride_in_1x1=arch.stride_in_1x1, gn_groups=arch.gn_groups,
                                       gn_eps=arch.gn_eps, pixel_means=arch.pixel_means)
            return arch, f"classifier; body settings from {how}"
        _cross_check(arch, from_blobs, source)
        return arch, how
    arch = architecture_from_blobs(blobs)
    return arch, "inferred from blob names and shapes"
