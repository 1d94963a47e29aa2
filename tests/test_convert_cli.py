"""`gnconvert convert` / `inspect` end to end on full-size seeded Python-2 checkpoints."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from detectron_server import detectron_server, gnconvert_env  # noqa: F401  (fixtures)

from gnconvert.architecture import REFERENCE_ARCHITECTURES, classifier_r50_gn, gn_r50_fpn
from gnconvert.checkpoint.converted import load_converted
from gnconvert.checkpoint.name_mapping import mapping_rules, torch_to_detectron
from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
from gnconvert.cli import main
from gnconvert.fidelity.seeded import seeded_blobs

GN_R50 = "e2e_mask_rcnn_R-50-FPN_2x_gn"


def run(argv, capsys):
    """The CLI as a user runs it: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def gn_pkl(seeded_pickle, golden_dir):
    """A full-size seeded R-50-FPN GN model_final.pkl, written the way Python 2 Detectron did."""
    cfg_text = (golden_dir / "cfg" / f"{GN_R50}.yaml").read_text()
    return seeded_pickle(GN_R50), seeded_blobs(gn_r50_fpn(), seed=1), cfg_text


@pytest.fixture(scope="module")
def classifier_pkl(tmp_path_factory):
    """The ImageNet R-50-GN backbone: a bare blob dict, no cfg."""
    path = tmp_path_factory.mktemp("cls") / "R-50-GN.pkl"
    write_detectron_pickle(path, seeded_blobs(classifier_r50_gn(), seed=1), layout="bare")
    return path


def _inventory(golden_dir, name):
    return json.loads((golden_dir / "inventory" / f"{name}.json").read_text())


def test_convert_full_size_gn_and_back_to_the_same_pkl(gn_pkl, tmp_path, capsys, golden_dir):
    pkl, blobs, cfg_text = gn_pkl
    out = tmp_path / "r50gn.safetensors"
    code, stdout, err = run(["convert", str(pkl), "-o", str(out)], capsys)
    assert code == 0, err
    assert "dropped 192 blobs (momentum x190, pred_b, pred_w)" in stdout
    ckpt = load_converted(out)
    assert ckpt.arch == REFERENCE_ARCHITECTURES[GN_R50]
    assert ckpt.cfg_text == cfg_text
    assert ckpt.provenance["source_md5"] == hashlib.md5(pkl.read_bytes()).hexdigest()
    assert ckpt.provenance["architecture_from"] == "embedded cfg" and ckpt.provenance["model_id"] is None
    inventory = _inventory(golden_dir, GN_R50)
    trainable = {b["name"] for b in inventory["blobs"] if b["trainable"]}
    assert ckpt.dropped == {**{f"{n}_momentum": f"optimizer momentum of {n}" for n in trainable},
                            "pred_w": ckpt.dropped["pred_w"], "pred_b": ckpt.dropped["pred_b"]}
    for rule in mapping_rules(ckpt.arch):
        assert ckpt.state_dict[rule.param].tobytes() == blobs[rule.blob].tobytes(), rule.param
    # back to Detectron: the same blobs in the same order give the original file byte for byte
    extra = {name: blobs[name] for name in ckpt.dropped}
    back = torch_to_detectron(ckpt.state_dict, ckpt.arch, extra_blobs=extra)
    rebuilt = tmp_path / "rebuilt.pkl"
    write_detectron_pickle(rebuilt, {name: back[name] for name in blobs}, ckpt.cfg_text)
    assert hashlib.md5(rebuilt.read_bytes()).hexdigest() == ckpt.provenance["source_md5"]


def test_inspect_json_counts_match_the_inventory(gn_pkl, capsys, golden_dir):
    pkl, _, _ = gn_pkl
    code, stdout, err = run(["inspect", str(pkl), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    inventory = _inventory(golden_dir, GN_R50)
    params = inventory["blobs"]
    n_momentum = sum(b["trainable"] for b in params)
    assert summary["blobs"] == {"total": 415, "mapped_to_parameters": len(params),
                                "dropped": {"optimizer momentum": n_momentum,
                                            "ImageNet classifier fc carried over unused from pre-training": 2}}
    assert summary["parameter_count"] == sum(math.prod(b["shape"]) for b in params)
    assert summary["dropped"].keys() == {"pred_w", "pred_b"}
    assert summary["architecture_from"] == "embedded cfg" and summary["pickle_layout"] == "blobs+cfg"
    assert summary["settings"]["test"]["scale"] == 800 and summary["settings"]["gn_groups"] == 32


def test_inspect_text(gn_pkl, capsys):
    code, stdout, _ = run(["inspect", str(gn_pkl[0])], capsys)
    assert code == 0
    lines = dict(line.split(None, 1) for line in stdout.splitlines())
    assert lines["architecture"].startswith("R-50-FPN Mask R-CNN (GN")
    assert lines["blobs"].startswith("415: 223 mapped to parameters")
    assert "SCALE 800 MAX_SIZE 1333 NMS 0.5" in lines["test"]
    assert "[102.9801, 115.9465, 122.7717]" in lines["pixels"]


def test_classifier_without_cfg_is_inferred_and_says_so(classifier_pkl, tmp_path, capsys, golden_dir):
    out = tmp_path / "cls.safetensors"
    code, stdout, err = run(["convert", str(classifier_pkl), "-o", str(out)], capsys)
    assert code == 0, err
    code, stdout, err = run(["inspect", str(out), "--json"], capsys)
    summary = json.loads(stdout)
    assert summary["input_format"] == "gnconvert-converted"
    assert summary["architecture_from"] == "inferred from blob names and shapes"
    inventory = _inventory(golden_dir, "ImageNet_R-50-GN")
    assert summary["blobs"]["total"] == 161 == summary["parameter_tensors"]
    assert summary["parameter_count"] == sum(math.prod(b["shape"]) for b in inventory["blobs"])


def test_model_id_is_fetched_then_converted(classifier_pkl, detectron_server, gnconvert_env, tmp_path, capsys,
                                           monkeypatch):
    data = classifier_pkl.read_bytes()
    detectron_server.publish_model("47261647", model=data)
    out = tmp_path / "by_id.safetensors"
    code, stdout, err = run(["convert", "47261647", "-o", str(out)], capsys)
    assert code == 0, err
    ckpt = load_converted(out)
    assert ckpt.provenance["model_id"] == "47261647"
    assert ckpt.provenance["source_md5"] == hashlib.md5(data).hexdigest()
    assert ckpt.arch.kind == "classifier"
    # now cached: works offline
    monkeypatch.setenv("GNCONVERT_OFFLINE", "1")
    code, stdout, err = run(["inspect", "47261647", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["model_id"] == "47261647"


def test_uncached_model_offline_is_one_line(gnconvert_env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("GNCONVERT_OFFLINE", "1")
    code, stdout, err = run(["convert", "48616381", "-o", str(tmp_path / "x.safetensors")], capsys)
    assert code == 1 and err.startswith("gnconvert: error: GNCONVERT_OFFLINE is set") and err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_inputs_fail_with_one_line_and_leave_nothing(tmp_path, capsys, classifier_pkl, gn_pkl):
    out = tmp_path / "out.safetensors"
    html = tmp_path / "model_final.pkl"
    html.write_bytes(b"<!DOCTYPE html><html><body>Access denied</body></html>")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x02}U\x01wcos\nsystem\n(U\x04truetRs.")
    cases = [
        (["convert", str(tmp_path / "missing.pkl"), "-o", str(out)], 2, "no such file"),
        (["convert", "99999999", "-o", str(out)], 2, "unknown model id '99999999'"),
        (["convert", str(html), "-o", str(out)], 1, "not a protocol-2+ pickle: got HTML"),
        (["convert", str(evil), "-o", str(out)], 1, "refusing to load global os.system"),
        (["inspect", str(gn_pkl[0]), "--config", str(html)], 2, "embeds its own Detectron cfg"),
        (["convert", str(classifier_pkl), "-o", str(evil / "x.safetensors")], 2, "is a file, not a folder"),
    ]
    for argv, want_code, message in cases:
        code, stdout, err = run(argv, capsys)
        assert (code, message in err, err.count("\n")) == (want_code, True, 1), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl", "model_final.pkl"]


@pytest.mark.parametrize("damage,message", [
    ("missing", "1 missing: res3_2_branch2b_gn_s"),
    ("extra", "1 unexpected: mystery_blob; 1 mis-shaped: res4_0_branch2a_w (256, 8, 1, 1) != (256, 512, 1, 1)"),
])
def test_mapping_problems_name_the_blobs(tmp_path, capsys, damage, message):
    blobs = seeded_blobs(classifier_r50_gn(), seed=1)
    if damage == "missing":
        del blobs["res3_2_branch2b_gn_s"]
    else:
        blobs["res4_0_branch2a_w"] = blobs["res4_0_branch2a_w"][:, :8]
        blobs["mystery_blob"] = np.zeros(3, np.float32)
    pkl = tmp_path / "broken.pkl"
    write_detectron_pickle(pkl, blobs, layout="bare")
    code, _, err = run(["convert", str(pkl), "-o", str(tmp_path / "x.safetensors")], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pkl"]


def test_config_file_for_a_backbone_without_cfg(classifier_pkl, capsys, golden_dir):
    config = golden_dir / "cfg" / f"{GN_R50}.yaml"
    code, stdout, err = run(["inspect", str(classifier_pkl), "--config", str(config), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["architecture_from"] == f"classifier; body settings from config file {config}"
    # a config that disagrees with the blobs is an error naming both sides, not a guess
    wrong = golden_dir / "cfg" / "e2e_mask_rcnn_R-101-FPN_2x_gn.yaml"
    code, _, err = run(["inspect", str(classifier_pkl), "--config", str(wrong)], capsys)
    assert code == 1 and "depth=101 but the blobs say depth=50" in err and err.count("\n") == 1
