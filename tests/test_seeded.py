"""Our seeded stand-in weights equal the ones Detectron's golden outputs were computed on."""
from __future__ import annotations

import numpy as np
import pytest

from gnconvert.architecture import REFERENCE_ARCHITECTURES
from gnconvert.fidelity.seeded import blob_rng, blobs_checksum, draw_blob, seeded_blobs

# golden/README.md, "Checksums for seed 1": (blob count, sha256[:16])
README_CHECKSUMS = {
    "e2e_mask_rcnn_R-50-FPN_2x_gn": (415, "9a503c71c2c585e5"),
    "e2e_mask_rcnn_R-101-FPN_2x_gn": (721, "cd717bccf600c3b5"),
    "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn": (446, "59bdbb2c7cdbaa73"),
    "e2e_mask_rcnn_R-50-FPN_2x": (287, "c2fc3d9b26db1430"),
    "e2e_mask_rcnn_R-101-FPN_2x": (491, "8c13926db51be37b"),
    "ImageNet_R-50-GN": (161, "6146fa87b49c2154"),
    "ImageNet_R-101-GN": (314, "9c82e73f9200009d"),
}


@pytest.mark.parametrize("name", list(README_CHECKSUMS))
def test_checksum_matches_the_golden_readme(name):
    blobs = seeded_blobs(REFERENCE_ARCHITECTURES[name], seed=1)
    count, digest = README_CHECKSUMS[name]
    assert len(blobs) == count
    assert all(v.dtype == np.float32 for v in blobs.values())
    assert blobs_checksum(blobs)[:16] == digest


def test_checksum_definition_by_hand():
    """sha256 over sorted names: name bytes, then array bytes."""
    import hashlib

    a, b = np.arange(3, dtype=np.float32), np.ones((2, 2), np.float32)
    expected = hashlib.sha256(b"a" + a.tobytes() + b"b" + b.tobytes()).hexdigest()
    assert blobs_checksum({"b": b, "a": a}) == expected


def test_stream_is_keyed_by_seed_and_name_crc():
    # the README's key, computed with binascii's CRC-32 rather than the module's zlib call
    import binascii

    crc = binascii.crc32(b"conv1_w") & 0xFFFFFFFF
    expected = np.random.RandomState((2 * 1000003 + crc) & 0xFFFFFFFF).normal(0.0, 1.0, 4)
    np.testing.assert_array_equal(blob_rng("conv1_w", 2).normal(0.0, 1.0, 4), expected)


@pytest.mark.parametrize("name,shape,low,high", [
    ("res_conv1_bn_s", (64,), 0.01, 0.03),
    ("res2_0_branch2c_gn_s", (256,), 0.2, 0.6),
    ("res2_0_branch2a_bn_s", (64,), 0.5, 1.5),
])
def test_scale_rules_draw_in_their_ranges(name, shape, low, high):
    values = draw_blob(name, shape, blob_rng(name, 1))
    assert values.min() >= low and values.max() <= high


def test_normal_rules_have_their_spread():
    """Standard deviations of big blobs match the README's rules within sampling noise."""
    cases = {
        ("fc6_w", (1024, 12544)): np.sqrt(2.0 / 12544),  # He over the fan-in
        ("fc7_w", (1024, 1024)): np.sqrt(0.05 / 1024),
        ("bbox_pred_w", (324, 1024)): 0.003,
        ("cls_score_w", (81, 1024)): 0.15,
        ("mask_fcn_logits_w", (81, 256, 1, 1)): 0.05,
        ("conv1_w", (64, 3, 7, 7)): np.sqrt(2.0 / 147),
    }
    for (name, shape), std in cases.items():
        values = draw_blob(name, shape, blob_rng(name, 1)).astype(np.float64)
        assert abs(values.std() / std - 1) < 0.05, name


def test_momentum_is_drawn_after_the_value_from_the_same_stream():
    arch = REFERENCE_ARCHITECTURES["e2e_mask_rcnn_R-50-FPN_2x_gn"]
    blobs = seeded_blobs(arch, seed=3)
    rng = blob_rng("fc6_b", 3)
    np.testing.assert_array_equal(blobs["fc6_b"], rng.normal(0.0, 0.05, (1024,)).astype(np.float32))
    np.testing.assert_array_equal(blobs["fc6_b_momentum"], rng.normal(0.0, 1e-4, (1024,)).astype(np.float32))
    assert "conv1_w_momentum" not in blobs  # frozen at FREEZE_AT 2
