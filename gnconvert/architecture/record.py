"""The architecture record: everything about a Detectron model that changes numbers.

Read once from a checkpoint's embedded cfg (`from_cfg`, cross-checked against its blobs,
`from_blobs`), it travels with the converted weights and is the only input the model
builder and the inference path take.  Defaults are Detectron's `core/config.py` values for
the 04_2018 GN and 12_2017 BN* Mask R-CNN configs.  The choices it records are enums
whose values are the strings written to the converted file's JSON.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Tuple, Type


class Choice(str, Enum):
    """A string-valued choice that prints, formats and serialises as its value."""

    def __str__(self) -> str:
        return self.value


class Kind(Choice):
    MASK_RCNN = "mask_rcnn"
    CLASSIFIER = "classifier"  # an ImageNet backbone: body + `pred` fc


class Norm(Choice):
    GN = "GN"
    AFFINE = "AffineChannel"  # frozen BN folded into a per-channel scale and bias
    NONE = "none"  # the conv carries a bias instead (BN* FPN and heads)


class BoxHeadType(Choice):
    CONVS_FC_GN = "4conv1fc_gn"  # add_roi_Xconv1fc_gn_head
    TWO_FC = "2fc"  # add_roi_2mlp_head


class MaskHeadType(Choice):
    CONVS_GN = "4conv_gn"  # mask_rcnn_fcn_head_v1up4convs_gn
    CONVS = "4conv"  # mask_rcnn_fcn_head_v1up4convs


GN, AFFINE = Norm.GN, Norm.AFFINE
_CHOICES: Dict[str, Type[Choice]] = {"kind": Kind, "norm": Norm, "fpn_norm": Norm, "box_head": BoxHeadType,
                                      "mask_head": MaskHeadType}


@dataclass(frozen=True)
class Stage:
    """One ResNet stage: Detectron's name (res2..res5), its blocks and widths, its stride."""

    index: int  # 2..5
    blocks: int
    inner: int  # the bottleneck's 1x1 / 3x3 width
    out: int
    stride: int  # relative to the input image

    @property
    def name(self) -> str:
        return f"res{self.index}"


_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
DEPTHS = tuple(_BLOCKS)


def resnet_stages(depth: int) -> Tuple[Stage, ...]:
    """res2..res5 of a Detectron ResNet-50 / 101: the one table every module reads."""
    return tuple(Stage(index=i, blocks=b, inner=64 << (i - 2), out=256 << (i - 2), stride=1 << i)
                 for i, b in zip((2, 3, 4, 5), _BLOCKS[depth]))


# Detectron's own constants (core/config.py), the one copy: the model record's defaults and the cfg
# reader's fallbacks (architecture.from_cfg.DETECTRON_DEFAULTS) both read them
PIXEL_MEANS = (102.9801, 115.9465, 122.7717)  # BGR, subtracted; no division by a standard deviation
BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


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

    kind: Kind = Kind.MASK_RCNN
    depth: int = 50  # 50 | 101
    norm: Norm = Norm.GN  # GN | AFFINE, for the ResNet body
    gn_groups: int = 32
    gn_eps: float = 1e-5
    stride_in_1x1: bool = False  # True for the MSRA BN* bodies
    # FPN
    fpn_dim: int = 256
    fpn_norm: Norm = Norm.GN  # GN | NONE
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
    box_head: BoxHeadType = BoxHeadType.CONVS_FC_GN
    box_head_conv_dim: int = 256
    box_head_num_convs: int = 4
    mlp_head_dim: int = 1024
    box_roi_resolution: int = 7
    box_sampling_ratio: int = 2
    # mask head
    mask_head: MaskHeadType = MaskHeadType.CONVS_GN
    mask_dim: int = 256
    mask_resolution: int = 28
    mask_roi_resolution: int = 14
    mask_sampling_ratio: int = 2
    # data and decoding
    num_classes: int = 81  # background + 80 COCO classes
    pixel_means: Tuple[float, ...] = PIXEL_MEANS
    bbox_reg_weights: Tuple[float, ...] = BBOX_REG_WEIGHTS
    bbox_xform_clip: float = BBOX_XFORM_CLIP
    test: TestSettings = field(default_factory=TestSettings)
    # training provenance: decides which blobs a checkpoint carries besides the
    # parameters (optimizer momentum for trained ones, the unused ImageNet fc)
    freeze_at: int = 2  # TRAIN.FREEZE_AT: conv1 .. res{freeze_at} were not trained
    pretrained_on_imagenet: bool = True  # TRAIN.WEIGHTS was an ImageNet classifier

    def __post_init__(self) -> None:
        for name, choice in _CHOICES.items():  # plain strings (JSON, callers) become the enums
            value = getattr(self, name)
            if value not in {c.value for c in choice}:
                raise ValueError(f"unknown architecture {name} {value!r}; one of {', '.join(c.value for c in choice)}")
            object.__setattr__(self, name, choice(value))

    @property
    def num_anchors(self) -> int:
        return len(self.aspect_ratios)

    @property
    def stages(self) -> Tuple[Stage, ...]:
        return resnet_stages(self.depth)

    @property
    def uses_group_norm(self) -> bool:
        """Any GroupNorm in the network (body, FPN or heads); the BN* models have none."""
        return (Norm.GN in (self.norm, self.fpn_norm) or self.box_head == BoxHeadType.CONVS_FC_GN
                or self.mask_head == MaskHeadType.CONVS_GN)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Architecture:
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
    return Architecture(norm=Norm.AFFINE, stride_in_1x1=True, fpn_norm=Norm.NONE, box_head=BoxHeadType.TWO_FC,
                        mask_head=MaskHeadType.CONVS)


def classifier_r50_gn() -> Architecture:
    """ImageNet R-50-GN (47261647): the GN body plus the `pred` fc, no detection heads."""
    return Architecture(kind=Kind.CLASSIFIER, num_classes=1000, freeze_at=0, pretrained_on_imagenet=False)


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
