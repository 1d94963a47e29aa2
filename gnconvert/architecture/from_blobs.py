"""The Architecture that a checkpoint's blob names and shapes imply, and the cross-check that
makes a cfg and its blobs agree: `architecture_from_checkpoint` is how every `.pkl` is read."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from gnconvert.architecture.from_cfg import SUPPORTED, architecture_from_cfg
from gnconvert.architecture.record import DEPTHS, Architecture, BoxHeadType, Kind, MaskHeadType, Norm, resnet_stages
from gnconvert.checkpoint.detectron_cfg import load_config_file
from gnconvert.errors import CheckpointError

_DEPTH_BY_RES4_BLOCKS = {resnet_stages(depth)[2].blocks: depth for depth in DEPTHS}


def _count(blobs: Mapping[str, Any], pattern: str, start: int = 0) -> int:
    """How many of pattern.format(start), pattern.format(start + 1), ... are blobs, in a row."""
    return next(i for i in itertools.count(start) if pattern.format(i) not in blobs) - start


def _shape(blobs: Mapping[str, Any], name: str) -> Tuple[int, ...]:
    return tuple(int(d) for d in np.shape(blobs[name]))


def _infer_freeze_at(blobs: Mapping[str, Any]) -> int:
    """FREEZE_AT from which body blobs carry optimizer momentum (2 if none do)."""
    from gnconvert.checkpoint.name_mapping import MOMENTUM_SUFFIX  # (the mapping imports this package)

    if "conv1_w" + MOMENTUM_SUFFIX in blobs:
        return 0
    for stage in (3, 4, 5):
        if f"res{stage}_0_branch2a_w{MOMENTUM_SUFFIX}" in blobs:
            return stage - 1
    return 5 if any(k.endswith(MOMENTUM_SUFFIX) for k in blobs) else 2


def architecture_from_blobs(blobs: Mapping[str, Any]) -> Architecture:
    """The Architecture the blob names and shapes imply; fails if they imply none we build.

    What blobs cannot show keeps its convention: GN bodies stride on the 3x3
    (STRIDE_1X1 False), MSRA frozen-BN bodies on the 1x1; Detectron's default TEST
    settings of the 2x configs; box weights (10, 10, 5, 5).
    """
    if "conv1_gn_s" in blobs:
        norm = Norm.GN
    elif "res_conv1_bn_s" in blobs:
        norm = Norm.AFFINE
    else:
        raise CheckpointError("blobs have neither conv1_gn_s nor res_conv1_bn_s: not a Detectron ResNet; "
                              "pass the model's Detectron config with --config")
    res4 = _count(blobs, "res4_{}_branch2a_w")
    if res4 not in _DEPTH_BY_RES4_BLOCKS:
        raise CheckpointError(f"blobs have {res4} res4 blocks: only ResNet-50 (6) and ResNet-101 (23) are supported")
    depth = _DEPTH_BY_RES4_BLOCKS[res4]
    body: Dict[str, Any] = dict(depth=depth, norm=norm, stride_in_1x1=norm == Norm.AFFINE)

    detection_markers = ("conv_rpn_fpn2_w", "cls_score_w", "fc6_w", "fpn_res5_2_sum_w")
    if not any(m in blobs for m in detection_markers):
        if "pred_w" not in blobs:
            raise CheckpointError("blobs hold a ResNet body but neither detection heads nor an ImageNet "
                                  "`pred` fc; nothing to convert")
        return Architecture(kind=Kind.CLASSIFIER, num_classes=_shape(blobs, "pred_w")[0], freeze_at=0,
                            pretrained_on_imagenet=False, **body)

    missing = [m for m in ("fpn_inner_res5_2_sum_w", "cls_score_w", "fc6_w", "conv5_mask_w",
                           "rpn_cls_logits_fpn2_w") if m not in blobs]
    if missing:
        raise CheckpointError(f"blobs lack {', '.join(missing)}: not an FPN Mask R-CNN; {SUPPORTED}")
    fpn_norm = Norm.GN if "fpn_inner_res5_2_sum_gn_s" in blobs else Norm.NONE
    fpn_dim = _shape(blobs, "fpn_inner_res5_2_sum_w")[0]
    num_anchors = _shape(blobs, "rpn_cls_logits_fpn2_w")[0]
    if num_anchors != 3:
        raise CheckpointError(f"blob rpn_cls_logits_fpn2_w has {num_anchors} anchors per place: "
                              "only Detectron's 3 aspect ratios (0.5, 1, 2) are supported")

    heads: Dict[str, Any] = {}
    if "head_conv1_w" in blobs:
        n = _count(blobs, "head_conv{}_w", start=1)
        conv_dim = _shape(blobs, "head_conv1_w")[0]
        heads.update(box_head=BoxHeadType.CONVS_FC_GN, box_head_num_convs=n, box_head_conv_dim=conv_dim)
        fc6_in = conv_dim
    elif "fc7_w" in blobs:
        heads.update(box_head=BoxHeadType.TWO_FC)
        fc6_in = fpn_dim
    else:
        raise CheckpointError(f"blobs have neither head_conv1_w nor fc7_w: unknown box head; {SUPPORTED}")
    fc6 = _shape(blobs, "fc6_w")
    resolution = int(round(math.sqrt(fc6[1] / fc6_in))) if len(fc6) == 2 else 0
    if resolution * resolution * fc6_in != (fc6[1] if len(fc6) == 2 else -1):
        raise CheckpointError(f"blob fc6_w has shape {fc6}: not {fc6_in} x R x R RoI features")

    if "_mask_fcn1_w" in blobs:
        mask_head, mask_first = MaskHeadType.CONVS_GN, "_mask_fcn1_w"
    elif "_[mask]_fcn1_w" in blobs:
        mask_head, mask_first = MaskHeadType.CONVS, "_[mask]_fcn1_w"
    else:
        raise CheckpointError(f"blobs have neither _mask_fcn1_w nor _[mask]_fcn1_w: unknown mask head; {SUPPORTED}")
    return Architecture(
        fpn_norm=fpn_norm,
        fpn_dim=fpn_dim,
        mlp_head_dim=fc6[0],
        box_roi_resolution=resolution,
        mask_head=mask_head,
        mask_dim=_shape(blobs, mask_first)[0],
        num_classes=_shape(blobs, "cls_score_w")[0],
        freeze_at=_infer_freeze_at(blobs),
        pretrained_on_imagenet="pred_w" in blobs or "fc1000_w" in blobs,
        **heads,
        **body,
    )


# Fields the blobs can show; the cfg must agree with them.
_VISIBLE_IN_BLOBS = ("kind", "depth", "norm", "fpn_norm", "fpn_dim", "box_head", "box_head_num_convs",
                     "box_head_conv_dim", "mlp_head_dim", "box_roi_resolution", "mask_head", "mask_dim",
                     "num_classes", "num_anchors")


def _cross_check_field(from_cfg: Architecture, from_blobs: Architecture, name: str, source: str) -> None:
    a, b = getattr(from_cfg, name), getattr(from_blobs, name)
    if a != b:
        raise CheckpointError(f"{source} says {name}={a!r} but the blobs say {name}={b!r}; "
                              "the checkpoint is inconsistent, pass the right config with --config")


def _cross_check(from_cfg: Architecture, from_blobs: Architecture, source: str) -> None:
    fields = ("kind",) if from_blobs.kind != from_cfg.kind else _VISIBLE_IN_BLOBS
    for name in fields:
        if name in ("box_head_num_convs", "box_head_conv_dim") and from_cfg.box_head != BoxHeadType.CONVS_FC_GN:
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
    if cfg is not None or config_path is not None:
        if cfg is not None:
            arch, how, source = architecture_from_cfg(cfg, embedded=True), "embedded cfg", "the embedded cfg"
        else:
            arch = architecture_from_cfg(load_config_file(config_path), embedded=False)
            how, source = f"config file {config_path}", f"config file {config_path}"
        from_blobs = architecture_from_blobs(blobs)
        if cfg is None and from_blobs.kind == Kind.CLASSIFIER and arch.kind == Kind.MASK_RCNN:
            # an ImageNet backbone with the config of a detector trained from it:
            # the config supplies what blobs cannot show (stride placement, GN eps)
            for name in ("depth", "norm"):
                _cross_check_field(arch, from_blobs, name, source)
            arch = dataclasses.replace(from_blobs, stride_in_1x1=arch.stride_in_1x1, gn_groups=arch.gn_groups,
                                       gn_eps=arch.gn_eps, pixel_means=arch.pixel_means)
            return arch, f"classifier; body settings from {how}"
        _cross_check(arch, from_blobs, source)
        return arch, how
    return architecture_from_blobs(blobs), "inferred from blob names and shapes"
