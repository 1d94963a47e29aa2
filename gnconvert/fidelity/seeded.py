"""Seeded stand-in weights: full-size checkpoints without downloading the real ones.

Detectron's golden outputs were computed on weights drawn by this exact scheme
(`golden/README.md`, "The seeded weights, exactly"), so a checkpoint built here
reproduces them.  Every blob has its own RNG stream, keyed by the seed and a CRC
of its name, so the value of one blob never depends on which others exist.  The
scales keep activations of a deep random ResNet bounded and give the heads a
spread of scores, boxes and masks that exercises the decisions downstream.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Mapping, Sequence

import numpy as np

from gnconvert.architecture import Architecture
from gnconvert.checkpoint.converted import tensors_digest
from gnconvert.checkpoint.name_mapping import MOMENTUM_SUFFIX, expected_inventory, preserved_inventory


def blob_rng(name: str, seed: int) -> np.random.RandomState:
    """numpy's legacy stream (identical on numpy 1.16 and 2.x) for one blob."""
    crc = zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF
    return np.random.RandomState((seed * 1000003 + crc) & 0xFFFFFFFF)


def draw_blob(name: str, shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    """One blob's values: the first rule matching its name, drawn in float64, cast to float32."""
    shape = tuple(shape)
    if name == "res_conv1_bn_s":  # the stem scale: a small one keeps the first ReLU sparse
        values = rng.uniform(0.01, 0.03, shape)
    elif name.endswith(("_gn_s", "_bn_s")):
        values = rng.uniform(0.2, 0.6, shape) if "branch2c" in name else rng.uniform(0.5, 1.5, shape)
    elif name.endswith(("_gn_b", "_bn_b")):
        values = rng.normal(0.0, 0.2, shape)
    elif name.startswith("cls_score_w"):
        values = rng.normal(0.0, 0.15, shape)
    elif name.startswith("cls_score_b"):
        values = rng.normal(0.0, 1.0, shape)
    elif name.startswith("bbox_pred_w"):
        values = rng.normal(0.0, 0.003, shape)
    elif name.startswith(("mask_fcn_logits_w", "rpn_cls_logits")) or name.endswith("_b"):
        values = rng.normal(0.0, 0.05, shape)
    elif name == "fc7_w":
        values = rng.normal(0.0, math.sqrt(0.05 / shape[1]), shape)
    else:  # He init over the fan-in
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    return values.astype(np.float32)


def seeded_blobs(arch: Architecture, seed: int = 1) -> Dict[str, np.ndarray]:
    """Every blob a Detectron checkpoint of `arch` holds (momentum, preserved fc included)."""
    entries = expected_inventory(arch) + [(n, s, False) for n, s in preserved_inventory(arch)]
    blobs: Dict[str, np.ndarray] = {}
    for name, shape, trainable in entries:
        rng = blob_rng(name, seed)
        blobs[name] = draw_blob(name, shape, rng)
        if trainable:  # drawn next from the same stream
            blobs[name + MOMENTUM_SUFFIX] = rng.normal(0.0, 1e-4, tuple(shape)).astype(np.float32)
    return blobs


def blobs_checksum(blobs: Mapping[str, np.ndarray]) -> str:
    """The golden README's checksum, sha256 over the sorted names: each name's bytes, then its
    array's bytes; the same digest converted files record, so the one function computes both."""
    return tensors_digest(blobs)
