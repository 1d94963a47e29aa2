"""The converted .safetensors checkpoint: everything comes back, bad files are refused."""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from gnconvert import __version__
from gnconvert.architecture import Architecture, classifier_r50_gn
from gnconvert.checkpoint.converted import is_converted_file, load_converted, save_converted
from gnconvert.checkpoint.name_mapping import detectron_to_torch, torch_to_detectron
from gnconvert.errors import CheckpointError, MappingError
from gnconvert.fidelity.seeded import seeded_blobs


@pytest.fixture(scope="module")
def classifier():
    arch = classifier_r50_gn()
    blobs = seeded_blobs(arch, seed=1)
    return arch, blobs, detectron_to_torch(blobs, arch)


def test_round_trip_restores_everything(classifier, tmp_path, golden_dir):
    arch, blobs, mapped = classifier
    cfg_text = (golden_dir / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml").read_text()
    provenance = {"model_id": "47261647", "source_path": "/x/R-50-GN.pkl", "source_md5": "0" * 32}
    dropped = {"lr": "training learning rate"}
    path = tmp_path / "R-50-GN.safetensors"
    save_converted(path, mapped.state_dict, arch, provenance, dropped, cfg_text)
    assert is_converted_file(path) and [p.name for p in tmp_path.iterdir()] == [path.name]

    back = load_converted(path)
    assert back.arch == arch
    assert back.provenance == {"gnconvert_version": __version__, **provenance}
    assert back.dropped == dropped and back.cfg_text == cfg_text
    assert back.num_parameters == sum(v.size for v in mapped.state_dict.values())
    assert sorted(back.state_dict) == sorted(mapped.state_dict)
    for name, value in mapped.state_dict.items():
        assert back.state_dict[name].dtype == np.float32
        assert back.state_dict[name].tobytes() == value.tobytes(), name
    # and through the mapping back to Detectron's blobs, bit for bit
    again = torch_to_detectron(back.state_dict, back.arch)
    assert sorted(again) == sorted(blobs)
    assert all(again[k].tobytes() == blobs[k].tobytes() for k in blobs)


def test_torch_tensors_are_accepted_and_returned(classifier, tmp_path):
    arch, _, mapped = classifier
    path = tmp_path / "t.safetensors"
    save_converted(path, mapped.torch_state_dict(), arch, {}, {}, None)
    back = load_converted(path)
    tensors = back.torch_state_dict()
    assert set(tensors) == set(mapped.state_dict) and back.cfg_text is None
    name = "fc.weight"
    assert tensors[name].numpy().tobytes() == mapped.state_dict[name].tobytes()


def test_metadata_is_plain_json_in_the_header(classifier, tmp_path):
    arch, _, mapped = classifier
    path = tmp_path / "m.safetensors"
    save_converted(path, mapped.state_dict, arch, {"model_id": "47261647"}, {"iter": "counter"}, "A: 1\n")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    record = json.loads(header["__metadata__"]["gnconvert"])
    assert header["__metadata__"]["format"] == "gnconvert-converted"
    assert record["format_version"] == 2 and record["architecture"]["kind"] == "classifier"
    assert record["tensors_sha256"] == hashlib.sha256(b"".join(
        name.encode() + np.ascontiguousarray(mapped.state_dict[name], np.float32).tobytes()
        for name in sorted(mapped.state_dict))).hexdigest()
    assert Architecture.from_dict(record["architecture"]) == arch
    assert record["provenance"]["model_id"] == "47261647" and record["cfg_text"] == "A: 1\n"


def test_weights_that_do_not_match_the_record_are_refused(classifier, tmp_path):
    arch, _, mapped = classifier
    state = dict(mapped.state_dict)
    del state["fc.bias"]
    state["fc.weight"] = state["fc.weight"][:10]
    with pytest.raises(MappingError, match="1 missing: fc.bias; 1 mis-shaped: fc.weight"):
        save_converted(tmp_path / "x.safetensors", state, arch, {}, {}, None)
    assert list(tmp_path.iterdir()) == []


def _write_with_metadata(path, state, metadata):
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata=metadata)


def test_tampered_or_foreign_files(classifier, tmp_path):
    arch, _, mapped = classifier
    good = tmp_path / "good.safetensors"
    save_converted(good, mapped.state_dict, arch, {}, {}, None)
    from safetensors import safe_open

    with safe_open(str(good), framework="numpy") as f:
        metadata = f.metadata()
    # a tensor removed after the fact
    state = dict(mapped.state_dict)
    state.pop("body.stem.conv.weight")
    _write_with_metadata(tmp_path / "tampered.safetensors", state, metadata)
    with pytest.raises(MappingError, match="missing: body.stem.conv.weight"):
        load_converted(tmp_path / "tampered.safetensors")
    # someone else's safetensors file
    _write_with_metadata(tmp_path / "foreign.safetensors", {"w": np.zeros(2, np.float32)}, None)
    with pytest.raises(CheckpointError, match="not a gnconvert converted checkpoint"):
        load_converted(tmp_path / "foreign.safetensors")
    # a newer format
    record = json.loads(metadata["gnconvert"])
    record["format_version"] = 99
    _write_with_metadata(tmp_path / "newer.safetensors", mapped.state_dict,
                         {"format": "gnconvert-converted", "gnconvert": json.dumps(record)})
    with pytest.raises(CheckpointError, match="format 99 by a newer gnconvert"):
        load_converted(tmp_path / "newer.safetensors")
    # an architecture record with a field we do not know
    record["format_version"] = 1
    record["architecture"]["wings"] = 2
    _write_with_metadata(tmp_path / "arch.safetensors", mapped.state_dict,
                         {"format": "gnconvert-converted", "gnconvert": json.dumps(record)})
    with pytest.raises(CheckpointError, match="architecture record is invalid"):
        load_converted(tmp_path / "arch.safetensors")
    # truncated and non-safetensors files
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_converted(tmp_path / "cut.safetensors")
    (tmp_path / "html.safetensors").write_bytes(b"<html>nope</html>")
    assert not is_converted_file(tmp_path / "html.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_converted(tmp_path / "html.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_converted(tmp_path / "absent.safetensors")
