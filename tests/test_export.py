"""`gnconvert export` to detectron, safetensors and onnx; bad targets and outputs.

The source is a full-size seeded R-50-FPN GN checkpoint written as Detectron
writes its `.pkl` (Python-2 pickle with the real embedded cfg).  The round trip is
judged against that original file, the safetensors file with the `safetensors`
package alone, the ONNX parts with onnxruntime against the PyTorch modules.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gnconvert.architecture import gn_r50_fpn
from gnconvert.checkpoint.name_mapping import mapping_rules
from gnconvert.checkpoint.pickle_reader import read_detectron_pickle
from gnconvert.checkpoint.sources import load_source
from gnconvert.errors import ParityError, UsageError
from gnconvert.export import export
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network
from gnconvert.export.self_check import reference_detections
from gnconvert.fidelity.seeded import seeded_blobs
from gnconvert.results.detections import Detections


@pytest.fixture(scope="module")
def source(golden_dir, seeded_pickle):
    """(path of the seeded .pkl, its blobs, its cfg text, the converted checkpoint, network, reference)."""
    blobs = seeded_blobs(gn_r50_fpn(), 1)
    cfg_text = (golden_dir / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml").read_text()
    path = seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn")
    ckpt = load_source(str(path))
    network = loaded_network(ckpt)
    reference = reference_detections(network, ckpt.arch, BUNDLED_IMAGE)
    assert len(reference) > 0
    return path, blobs, cfg_text, ckpt, network, reference


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def test_detectron_round_trip_is_bit_exact(source, tmp_path):
    path, blobs, cfg_text, ckpt, network, reference = source
    out = tmp_path / "back.pkl"
    result = export(ckpt, "detectron", out, reference=reference, network=network)
    print(result.report.format())
    assert result.report.passed and result.report.differences["box"] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pkl"]

    assert out.read_bytes()[:2] == b"\x80\x02"  # protocol 2, as Python 2's cPickle wrote it
    back = read_detectron_pickle(out)
    assert back.layout == "blobs+cfg" and back.cfg_text == cfg_text
    rules = mapping_rules(ckpt.arch)
    assert sorted(back.blobs) == sorted(r.blob for r in rules)
    for rule in rules:
        assert back.blobs[rule.blob].dtype == np.float32 and back.blobs[rule.blob].shape == blobs[rule.blob].shape
        assert _bits(back.blobs[rule.blob]) == _bits(blobs[rule.blob]), rule.blob
    # what is not written back is exactly what conversion dropped: momentum and the ImageNet fc
    left_out = set(blobs) - set(back.blobs)
    assert left_out == set(ckpt.dropped)
    assert all(n.endswith("_momentum") or n in ("pred_w", "pred_b") for n in left_out)


def test_safetensors_reads_back_with_safetensors_alone(source, tmp_path):
    from safetensors import safe_open

    path, blobs, cfg_text, ckpt, network, reference = source
    out = tmp_path / "model.safetensors"
    result = export(ckpt, "safetensors", out, reference=reference, network=network)
    assert result.report.passed and result.report.differences["weights"] == 0.0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600

    with safe_open(str(out), framework="numpy") as f:
        record = json.loads(f.metadata()["gnconvert"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert record["architecture"] == json.loads(json.dumps(gn_r50_fpn().to_dict()))
    assert record["architecture"]["test"]["scale"] == 800 and record["architecture"]["test"]["nms"] == 0.5
    assert record["cfg_text"] == cfg_text
    assert record["provenance"]["source_md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    for rule in mapping_rules(ckpt.arch):
        assert _bits(tensors[rule.param]) == _bits(blobs[rule.blob]), rule.param
    assert len(tensors) == len(mapping_rules(ckpt.arch))


def test_onnx_parts_match_pytorch(source, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, blobs, cfg_text, ckpt, network, reference = source
    out = tmp_path / "model.onnx"
    result = export(ckpt, "onnx", out, network=network)
    print(result.report.format())
    assert result.report.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.box_head.onnx", "model.mask_head.onnx", "model.onnx"]

    # inputs the export never saw: another image size, other RoI counts
    rng = np.random.RandomState(7)
    cases = {
        "model.onnx": (rng.normal(0, 50, (1, 3, 96, 160)).astype(np.float32), lambda x: network(x)),
        "model.box_head.onnx": (rng.normal(0, 1, (5, 256, 7, 7)).astype(np.float32),
                                lambda x: network.box_predictor(network.box_head(x))),
        "model.mask_head.onnx": (rng.normal(0, 1, (3, 256, 14, 14)).astype(np.float32), network.mask_head),
    }
    for name, (x, run) in cases.items():
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["architecture"])["mask_resolution"] == 28 and "model_id" in json.loads(meta["provenance"])
        got = session.run(None, {session.get_inputs()[0].name: x})
        with torch.no_grad():
            expected = run(torch.from_numpy(x))
        flat = [expected] if isinstance(expected, torch.Tensor) else [t for part in expected for t in
                                                                       (part if isinstance(part, list) else [part])]
        assert len(got) == len(flat), name
        for g, e in zip(got, flat):
            e = e.numpy()
            assert g.shape == e.shape, name
            assert np.abs(g - e).max() <= 1e-4 * max(1.0, float(np.abs(e).max())), name


def test_failed_check_writes_nothing_and_keeps_the_old_file(source, tmp_path):
    path, blobs, cfg_text, ckpt, network, reference = source
    out = tmp_path / "model.pkl"
    out.write_bytes(b"previous export")
    wrong = Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                       classes=np.zeros(0, np.int64), image_size=reference.image_size)
    with pytest.raises(ParityError, match="nothing was written"):
        export(ckpt, "detectron", out, reference=wrong, network=network)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl"]
    assert out.read_bytes() == b"previous export"


def test_failure_after_writing_leaves_no_partial_file(source, tmp_path):
    path, blobs, cfg_text, ckpt, network, reference = source
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(UsageError, match="could not be decoded"):
        export(ckpt, "safetensors", tmp_path / "model.safetensors", image=broken, network=network)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


def test_unknown_target_is_a_usage_error(source, tmp_path):
    with pytest.raises(UsageError, match="choose one of export, aoti, torchscript, onnx, safetensors, detectron"):
        export(source[3], "tflite", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gnconvert", "export", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_rejects_bad_targets_and_unwritable_outputs(source, tmp_path):
    pkl = str(source[0])
    proc = _cli(pkl, "--to", "tflite", "-o", "model.tflite", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'tflite' is not one of 'export', 'aoti', 'torchscript', 'onnx', 'safetensors', 'detectron'" in proc.stderr


    (tmp_path / "taken").mkdir()
    proc = _cli(pkl, "--to", "onnx", "-o", "taken", cwd=tmp_path)
    assert proc.returncode == 2 and "'taken' is a directory" in proc.stderr
    with pytest.raises(UsageError, match="output .*taken is a folder; pass a file name"):
        export(source[3], "torchscript", tmp_path / "taken")

    (tmp_path / "a_file").write_text("x")
    proc = _cli(pkl, "--to", "detectron", "-o", "a_file/model.pkl", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gnconvert: error: cannot write in {tmp_path}/a_file: {tmp_path}/a_file is a file, not a folder; "
        "choose another output location"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "taken"] and not any((tmp_path / "taken").iterdir())


def test_cli_exports_and_prints_the_check(source, tmp_path):
    proc = _cli(str(source[0]), "--to", "detectron", "-o", "back.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("wrote back.pkl in ")
    assert lines[1] == "verify detectron back.pkl on chelsea.png (weights + whole pipeline): PASS"
    assert f"  detections: {len(source[5])}" in lines
    assert "  max box difference: 0 (allowed 0.001)" in lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pkl"]
    assert read_detectron_pickle(tmp_path / "back.pkl").cfg_text == source[2]
