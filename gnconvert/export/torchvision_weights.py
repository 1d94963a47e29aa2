"""Our parameter names -> torchvision's and timm's, with the two conventions that differ.

- Channel order: Detectron feeds BGR pixels in 0..255 minus its BGR means, with std 1; timm and
  torchvision feed RGB in 0..1, then (x - mean) / std.  conv1's input channels are reversed and the
  means given in RGB order divided by 255, with std 1/255: the same numbers reach the network.
- Classes: Detectron's 81 contiguous outputs (background first) become torchvision's COCO layout,
  91 outputs indexed by COCO category id (background 0, the ten unused ids in between), as
  torchvision's COCO models have them.  Unused rows get zero weights and a bias so negative that
  their softmax is exactly 0 in float32 (so they never score, and train with zero gradient).

Torchvision's and timm's ResNets share their names (`conv1`, `bn1`, `layer1.0.downsample.1`, ...):
one table serves both.  Every rule is a regular expression over our names; each of our
parameters must match exactly one, so a parameter nobody maps is an error, never a silent drop.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from gnconvert.architecture import AFFINE, GN, Architecture, BoxHeadType, Kind, MaskHeadType, TestSettings
from gnconvert.errors import MappingError, UsageError
from gnconvert.results import coco_categories

TORCHVISION_CLASSES = 91  # COCO category ids 1..90 and background 0
UNUSED_CLASS_BIAS = -1.0e4  # exp(-1e4 - max) is 0 in float32 (and fits float16 for mixed-precision training)
RGB_MEANS_NOTE = ("RGB input in 0..1; mean = Detectron's BGR PIXEL_MEANS reversed / 255, std = 1/255: "
                  "(x - mean) / std gives Detectron's RGB pixels minus its means in 0..255, and conv1's "
                  "input channels were reversed from Detectron's BGR")

Rule = Tuple[str, str]  # (regex over our name, replacement giving theirs)

_RESNET_RULES: List[Rule] = [
    (r"^stem\.conv\.weight$", "conv1.weight"),
    (r"^stem\.norm\.(\w+)$", r"bn1.\1"),
    (r"^res(\d)\.(\d+)\.conv(\d)\.weight$", r"layer{\1}.\2.conv\3.weight"),
    (r"^res(\d)\.(\d+)\.norm(\d)\.(\w+)$", r"layer{\1}.\2.bn\3.\4"),
    (r"^res(\d)\.(\d+)\.shortcut\.conv\.weight$", r"layer{\1}.\2.downsample.0.weight"),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$", r"layer{\1}.\2.downsample.1.\3"),
]
_LEVEL_RULES: List[Rule] = [  # FPN level l (2..5) is torchvision's block l - 2
    (r"^fpn\.lateral(\d)\.conv\.(\w+)$", r"backbone.fpn.inner_blocks.{\1}.0.\2"),
    (r"^fpn\.lateral(\d)\.norm\.(\w+)$", r"backbone.fpn.inner_blocks.{\1}.1.\2"),
    (r"^fpn\.output(\d)\.conv\.(\w+)$", r"backbone.fpn.layer_blocks.{\1}.0.\2"),
    (r"^fpn\.output(\d)\.norm\.(\w+)$", r"backbone.fpn.layer_blocks.{\1}.1.\2"),
]
_HEAD_RULES: List[Rule] = [  # numbered from 1 here, from 0 in torchvision's Sequential heads
    (r"^rpn_head\.conv\.(\w+)$", r"rpn.head.conv.0.0.\1"),
    (r"^rpn_head\.(cls_logits|bbox_pred)\.(\w+)$", r"rpn.head.\1.\2"),
    (r"^box_head\.conv(\d)\.conv\.(\w+)$", r"roi_heads.box_head.{\1}.0.\2"),
    (r"^box_head\.conv(\d)\.norm\.(\w+)$", r"roi_heads.box_head.{\1}.1.\2"),
    (r"^box_predictor\.(cls_score|bbox_pred)\.(\w+)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^mask_head\.fcn(\d)\.conv\.(\w+)$", r"roi_heads.mask_head.{\1}.0.\2"),
    (r"^mask_head\.fcn(\d)\.norm\.(\w+)$", r"roi_heads.mask_head.{\1}.1.\2"),
    (r"^mask_head\.deconv\.(\w+)$", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"^mask_head\.logits\.(\w+)$", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
]


def _rename(name: str, rules: List[Rule], offset: Callable[[int], int]) -> Optional[str]:
    """Our `name` under the first matching rule; `{n}` in a replacement is group n's number shifted."""
    for pattern, replacement in rules:
        m = re.match(pattern, name)
        if m:
            return re.sub(r"\{(\d+)\}", lambda g: str(offset(int(g.group(1)))), m.expand(replacement))
    return None


def _box_fc_rules(arch: Architecture) -> List[Rule]:
    if arch.box_head == BoxHeadType.CONVS_FC_GN:  # FastRCNNConvFCHead: convs, Flatten, fc6
        return [(r"^box_head\.fc6\.(\w+)$", rf"roi_heads.box_head.{arch.box_head_num_convs + 1}.\1")]
    return [(r"^box_head\.(fc6|fc7)\.(\w+)$", r"roi_heads.box_head.\1.\2")]  # TwoMLPHead


def torchvision_names(arch: Architecture) -> Callable[[str], Optional[str]]:
    """our parameter name -> torchvision's (MaskRCNN, or a ResNet classifier), None if no rule takes it."""
    def name_of(ours: str) -> Optional[str]:
        if ours.startswith("body."):
            theirs = _rename(ours[len("body."):], _RESNET_RULES, lambda stage: stage - 1)
            if theirs is None or arch.kind == Kind.CLASSIFIER:
                return theirs
            return f"backbone.body.{theirs}"
        if arch.kind == Kind.CLASSIFIER:
            return ours if re.match(r"^fc\.(weight|bias)$", ours) else None
        return (_rename(ours, _LEVEL_RULES, lambda level: level - 2)
                or _rename(ours, _box_fc_rules(arch) + _HEAD_RULES, lambda index: index - 1))
    return name_of


def coco_layout(rows: np.ndarray, fill: float, per_class: int = 1) -> np.ndarray:
    """Detectron's rows (background, then contiguous classes 1..80, `per_class` rows each) at
    torchvision's COCO-id positions; the other rows hold `fill`."""
    rows = np.asarray(rows, np.float32)
    k = per_class
    out = np.full((TORCHVISION_CLASSES * k,) + rows.shape[1:], fill, np.float32)
    for contiguous in range(rows.shape[0] // k):
        target = 0 if contiguous == 0 else coco_categories.coco_id(contiguous)
        out[target * k: (target + 1) * k] = rows[contiguous * k: (contiguous + 1) * k]
    return out


def _class_rows(ours: str, value: np.ndarray) -> np.ndarray:
    if ours == "box_predictor.cls_score.bias":
        return coco_layout(value, UNUSED_CLASS_BIAS)
    if ours.startswith("box_predictor.cls_score.") or ours.startswith("mask_head.logits."):
        return coco_layout(value, 0.0)
    if ours.startswith("box_predictor.bbox_pred."):
        return coco_layout(value, 0.0, per_class=4)
    return value


def _frozen_bn_buffers(name: str, channels: int) -> Dict[str, np.ndarray]:
    """FrozenBatchNorm2d(eps=0) with mean 0 and variance 1 is Detectron's AffineChannel exactly."""
    stem = name[: -len(".weight")]
    return {f"{stem}.running_mean": np.zeros(channels, np.float32), f"{stem}.running_var": np.ones(channels, np.float32)}


def check_supported(arch: Architecture) -> None:
    """Everything the torchvision builder fixes must be what this checkpoint has, or a clear refusal."""
    if arch.kind == Kind.CLASSIFIER:
        if arch.norm != GN:
            raise UsageError(f"only GroupNorm ImageNet backbones convert to torchvision/timm, not {arch.norm}")
        return
    builder = Architecture()  # what the builder lays out: the GN R-50-FPN's layout, Detectron's constants
    fixed = {k: getattr(builder, k) for k in (
        "fpn_dim", "rpn_min_level", "rpn_max_level", "roi_min_level", "roi_max_level", "roi_canonical_scale",
        "roi_canonical_level", "anchor_start_size", "aspect_ratios", "box_roi_resolution", "box_sampling_ratio",
        "mask_roi_resolution", "mask_sampling_ratio", "mask_resolution", "num_classes", "gn_groups", "gn_eps",
        "mlp_head_dim", "box_head_conv_dim", "box_head_num_convs", "mask_dim", "coarsest_stride", "bbox_reg_weights",
        "pixel_means")}
    differing = [f"{k}={getattr(arch, k)!r}" for k, v in fixed.items() if getattr(arch, k) != v]
    if (arch.norm == GN) != (arch.fpn_norm == GN) or arch.stride_in_1x1 == (arch.norm == GN):
        differing.append(f"norm={arch.norm}, fpn_norm={arch.fpn_norm}, stride_in_1x1={arch.stride_in_1x1}")
    heads = (BoxHeadType.CONVS_FC_GN, MaskHeadType.CONVS_GN) if arch.norm == GN else (BoxHeadType.TWO_FC,
                                                                                     MaskHeadType.CONVS)
    if (arch.box_head, arch.mask_head) != heads:
        differing.append(f"box_head={arch.box_head}, mask_head={arch.mask_head} with norm={arch.norm}")
    if arch.test.rpn_min_size > 1:
        differing.append(f"TEST.RPN_MIN_SIZE={arch.test.rpn_min_size} (torchvision filters proposals in "
                         "resized pixels, so only Detectron's default of at most 1 carries over)")
    if differing:
        raise UsageError("the torchvision Mask R-CNN builder is Detectron's R-50/101-FPN GN or BN* layout; this "
                         f"checkpoint differs in {', '.join(differing)}; export it --to torchscript instead")


def torchvision_state_dict(state: Mapping[str, Any], arch: Architecture) -> Dict[str, np.ndarray]:
    """Our state dict (numpy or torch values) -> torchvision's (and timm's, for a classifier) as float32 arrays."""
    check_supported(arch)
    name_of = torchvision_names(arch)
    out: Dict[str, np.ndarray] = {}
    unmapped = []
    for ours, value in state.items():
        theirs = name_of(ours)
        if theirs is None:
            unmapped.append(ours)
            continue
        array = np.array(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
        if ours == "body.stem.conv.weight":
            array = np.ascontiguousarray(array[:, ::-1])  # BGR -> RGB input channels
        out[theirs] = np.ascontiguousarray(_class_rows(ours, array))
        if arch.norm == AFFINE and ours.startswith("body.") and re.search(r"\.norm\d?\.weight$", ours):
            out.update(_frozen_bn_buffers(theirs, array.shape[0]))
    if unmapped:
        raise MappingError(f"{len(unmapped)} parameters have no torchvision name, e.g. {', '.join(unmapped[:3])}")
    return out


def builder_kwargs(arch: Architecture) -> Dict[str, Any]:
    """`detectron_maskrcnn(**kwargs)` for this checkpoint: depth, norm, and any test setting that
    differs from Detectron's defaults (which the builder has), under MaskRCNN's names."""
    kwargs: Dict[str, Any] = {"depth": arch.depth, "gn": arch.norm == GN}
    t, default = arch.test, TestSettings()
    names = {"scale": "min_size", "max_size": "max_size", "rpn_pre_nms_top_n": "rpn_pre_nms_top_n_test",
             "rpn_post_nms_top_n": "rpn_post_nms_top_n_test", "rpn_nms_thresh": "rpn_nms_thresh",
             "score_thresh": "box_score_thresh", "nms": "box_nms_thresh", "detections_per_im": "box_detections_per_img"}
    for ours, theirs in names.items():
        if getattr(t, ours) != getattr(default, ours):
            kwargs[theirs] = getattr(t, ours)
    return kwargs


def builder_call(arch: Architecture) -> str:
    """The builder call as Python source, for reports and the sidecar JSON."""
    return "detectron_maskrcnn(" + ", ".join(f"{k}={v!r}" for k, v in builder_kwargs(arch).items()) + ")"


def category_names() -> List[str]:
    """torchvision's 91 COCO labels: '__background__', the names at their ids, 'N/A' for unused ids."""
    names = ["__background__"] + ["N/A"] * (TORCHVISION_CLASSES - 1)
    for cid, name in coco_categories.COCO_CATEGORIES:
        names[cid] = name
    return names
