"""The architecture record: everything about a Detectron model that changes numbers.

Read once from a checkpoint's embedded cfg (cross-checked against its blobs, see
`gnconvert.name_mapping`), it travels with the converted weights and is the only
input the model builder and the inference path take.  Defaults are Detectron's
`core/config.py` values for the 04_2018 GN and 12_2017 BN* Mask R-CNN configs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

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
