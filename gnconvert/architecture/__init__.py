"""The architecture record (`record`), read from a Detectron cfg (`from_cfg`) or from a
checkpoint's blobs and cross-checked against them (`from_blobs`)."""
from gnconvert.architecture.from_blobs import architecture_from_blobs, architecture_from_checkpoint
from gnconvert.architecture.from_cfg import DETECTRON_DEFAULTS, TEST_OVERRIDES, architecture_from_cfg, with_overrides
from gnconvert.architecture.record import (
    AFFINE,
    GN,
    REFERENCE_ARCHITECTURES,
    Architecture,
    BoxHeadType,
    Kind,
    MaskHeadType,
    Norm,
    Stage,
    TestSettings,
    bn_r50_fpn,
    classifier_r50_gn,
    gn_r50_fpn,
    resnet_stages,
)

__all__ = [
    "AFFINE", "GN", "REFERENCE_ARCHITECTURES", "Architecture", "BoxHeadType", "Kind", "MaskHeadType", "Norm", "Stage",
    "TestSettings", "DETECTRON_DEFAULTS", "TEST_OVERRIDES", "architecture_from_blobs", "architecture_from_cfg",
    "architecture_from_checkpoint", "bn_r50_fpn", "classifier_r50_gn", "gn_r50_fpn", "resnet_stages",
    "with_overrides",
]
