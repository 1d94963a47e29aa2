"""What a new user hit (full disks, partial datasets, corrupted weights, lost runs, stale folders,
unknown cfg keys, raw tracebacks) and what they expected to find.  Each test fails on the code
before the fix; the full-disk ones use a real failed write (RLIMIT_FSIZE: the kernel refuses to
grow a file past the limit with EFBIG, as a full disk refuses with ENOSPC)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import cv2
import numpy as np
import pytest
import torch
from detectron_server import detectron_server, gnconvert_env  # noqa: F401  (fixtures)

from gnconvert.architecture import gn_r50_fpn
from gnconvert.checkpoint.converted import load_converted, save_converted
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.cli import main
from gnconvert.errors import CheckpointError, UsageError
from gnconvert.fidelity.seeded import seeded_blobs

TINY = ["--opts", "TEST.SCALE", "64", "TEST.MAX_SIZE", "96"]  # the full network, on a tiny input


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The seeded full-size R-50-FPN GN checkpoint as a converted .safetensors."""
    arch = gn_r50_fpn()
    mapped = detectron_to_torch(seeded_blobs(arch, 1), arch)
    path = tmp_path_factory.mktemp("ckpt") / "seeded.safetensors"
    save_converted(path, mapped.state_dict, arch, {"model_id": "seeded"}, mapped.dropped, None)
    return path


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def cli_with_file_size_limit(argv, limit_bytes, cwd=None):
    """The CLI in a child whose writes fail past `limit_bytes` (EFBIG, as on a full disk)."""
    code = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))
        from gnconvert.cli import main
        main(sys.argv[1:])
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, argv)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("gnconvert:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# --------------------------------------------------------------------------- 1. full disk
@pytest.mark.parametrize("argv", [
    ["export", "{ckpt}", "--to", "torchscript", "--no-verify", "-o", "{out}/model.pt"],
    ["export", "{ckpt}", "--to", "safetensors", "--no-verify", "-o", "{out}/model.safetensors"],
    ["convert", "{ckpt}", "-o", "{out}/model.safetensors"],
], ids=["export-torchscript", "export-safetensors", "convert"])
def test_full_disk_gives_one_line_and_leaves_nothing(converted, tmp_path, argv):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(ckpt=converted, out=out) for a in argv]
    proc = cli_with_file_size_limit(argv, 20 << 20)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = one_line_error(proc.stderr)
    assert line.startswith("gnconvert: error: ran out of space writing") and str(out) in line
    assert list(out.iterdir()) == []


def test_full_disk_during_predict_leaves_no_folder(converted, golden_dir, tmp_path):
    out = tmp_path / "new" / "predictions"
    proc = cli_with_file_size_limit(["predict", converted, golden_dir / "images" / "chelsea.png", "-o", out, *TINY],
                                    4096)
    assert proc.returncode == 1
    assert "ran out of space writing" in one_line_error(proc.stderr)
    assert not out.exists()


def test_not_enough_free_space_is_said_before_writing(converted, tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    code, _, err = run(["convert", str(converted), "-o", str(tmp_path / "c.safetensors")], capsys)
    assert code == 1 and "not enough space for" in err and "MiB free" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 2. partial datasets
def test_verify_on_a_partial_dataset_is_incomplete_not_pass(golden_dir, tmp_path, capsys):
    from coco_fixture import GoldenPredictor, build_coco

    from gnconvert.errors import ParityError
    from gnconvert.evaluation import VerifyConfig, find_layout, run_verify

    coco = build_coco(tmp_path / "coco", golden_dir)
    images = sorted((tmp_path / "coco" / "val2014").iterdir())
    for extra in images[1:]:
        extra.unlink()  # 1 of the 5 images present
    layout = find_layout(tmp_path / "coco")
    with pytest.raises(ParityError, match="INCOMPLETE.*4 of 5 images could not be read"):
        run_verify(GoldenPredictor(golden_dir), VerifyConfig(layout, tmp_path / "out", source="golden",
                   published={"box_ap": 100.0, "mask_ap": 100.0}, workers=0, progress=False), echo=print)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"]["overall"] == "INCOMPLETE" and report["images_skipped"] == 4
    assert "verdict: INCOMPLETE" in capsys.readouterr().out
    # a subset on purpose (--limit) is judged as asked
    ok = run_verify(GoldenPredictor(golden_dir), VerifyConfig(layout, tmp_path / "out2", source="golden", limit=1,
                    published={"box_ap": 100.0, "mask_ap": 100.0}, workers=0, progress=False), echo=print)
    assert ok["verdict"]["overall"] == "PASS" and coco["ids"]


def test_reference_covering_no_image_says_so():
    from gnconvert.evaluation.report import format_report

    comparison = {"matched": 0, "detectron_detections": 0, "matched_share": float("nan"), "iou_threshold": 0.99,
                  "ours_unmatched": 3, "box_max_abs_diff_px": {k: float("nan") for k in ("median", "p99", "max")},
                  "score_abs_diff": {k: float("nan") for k in ("median", "p99", "max")}}
    report = {"source": "s", "dataset": "d", "images_evaluated": 1, "images_skipped": 0, "evaluator": "pycocotools",
              "metrics": {}, "verdict": None, "tolerance": 0.1, "files": {"report": "r.json"},
              "timing": {"images_per_second": 1.0},
              "reference": {"metrics": {}, "comparison": comparison}}
    text = format_report(report)
    assert "nan%" not in text and "hold none for these images" in text


# --------------------------------------------------------------------------- 3. corrupted weights
def test_four_flipped_bytes_in_a_converted_file_are_caught(converted, golden_dir, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    data = bytearray(converted.read_bytes())
    data[-4000:-3996] = b"\xff\xff\xff\x7f"  # inside the last tensor
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad.safetensors is corrupt"):
        load_converted(bad)
    for command in (["inspect", str(bad)], ["predict", str(bad), str(golden_dir / "images" / "chelsea.png")]):
        code, _, err = run(command, capsys)
        assert code == 1 and "is corrupt" in err


def test_non_finite_weights_are_refused(tmp_path):
    arch = gn_r50_fpn()
    mapped = detectron_to_torch(seeded_blobs(arch, 1), arch)
    state = dict(mapped.state_dict)
    name = next(iter(state))
    state[name] = state[name].copy()
    state[name].flat[3] = np.nan
    with pytest.raises(CheckpointError, match=f"weight {name} has 1 NaN"):
        save_converted(tmp_path / "nan.safetensors", state, arch, {}, mapped.dropped, None)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 4, 5. predict runs and folders
def test_predict_skips_unreadable_images_keeps_the_rest_and_exits_1(converted, golden_dir, tmp_path, capsys):
    bad = tmp_path / "notanimage.jpg"
    bad.write_text("hello")
    out = tmp_path / "out"
    code, _, err = run(["predict", str(converted), str(golden_dir / "images" / "chelsea.png"), str(bad),
                        "-o", str(out), *TINY], capsys)
    assert code == 1 and "skipping" in err and "1 of 2 images could not be read" in err
    assert [e["file_name"] for e in json.loads((out / "images.json").read_text())] == ["chelsea.png"]
    assert json.loads((out / "results_bbox.json").read_text())


def test_interrupted_predict_resumes_to_the_same_results(converted, golden_dir, tmp_path, capsys, monkeypatch):
    from gnconvert.inference import Detector

    images = [str(golden_dir / "images" / n) for n in ("chelsea.png", "tiny_chelsea.png", "astronaut.png")]
    fresh = tmp_path / "fresh"
    assert run(["predict", str(converted), *images, "-o", str(fresh), "--no-draw", *TINY], capsys)[0] == 0

    calls = []
    original = Detector.predict

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(Detector, "predict", interrupted)
    out = tmp_path / "out"
    code, _, err = run(["predict", str(converted), *images, "-o", str(out), "--no-draw", *TINY], capsys)
    assert code == 130 and "interrupted after 1 of 3 images" in err and "--resume" in err
    assert not (out / "results_bbox.json").exists() and (out / "partial").is_dir()

    monkeypatch.setattr(Detector, "predict", original)
    code, _, _ = run(["predict", str(converted), *images, "-o", str(out), "--no-draw", "--resume", *TINY], capsys)
    assert code == 0
    for name in ("results_bbox.json", "results_segm.json", "images.json"):
        assert json.loads((out / name).read_text()) == json.loads((fresh / name).read_text()), name
    assert not (out / "partial").exists()


def test_predict_refuses_a_foreign_folder_and_replaces_its_own_files_as_a_set(converted, golden_dir, tmp_path,
                                                                              capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    code, _, err = run(["predict", str(converted), str(golden_dir / "images" / "chelsea.png"), "-o", str(foreign),
                        *TINY], capsys)
    assert code == 2 and "not written by gnconvert predict" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]

    out = tmp_path / "out"
    two = [str(golden_dir / "images" / n) for n in ("chelsea.png", "astronaut.png")]
    assert run(["predict", str(converted), *two, "-o", str(out), *TINY], capsys)[0] == 0
    assert run(["predict", str(converted), str(golden_dir / "images" / "tiny_chelsea.png"), "-o", str(out), *TINY],
               capsys)[0] == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [".gnconvert-predict.json", "0001_tiny_chelsea.png", "images.json", "results_bbox.json",
                     "results_segm.json"]
    assert {e["image_id"] for e in json.loads((out / "results_bbox.json").read_text())} == {1}


def test_predict_takes_folders_globs_min_score_and_json_to_stdout(converted, golden_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("chelsea.png", "tiny_chelsea.png"):
        shutil.copy(golden_dir / "images" / name, folder / name)
    code, out, _ = run(["predict", str(converted), str(folder), "--json", "-", "--min-score", "0.9", *TINY], capsys)
    assert code == 0
    doc = json.loads(out)
    assert [i["file_name"] for i in doc["images"]] == ["chelsea.png", "tiny_chelsea.png"]
    assert doc["bbox"] and all(e["score"] >= 0.9 for e in doc["bbox"]) and len(doc["segm"]) == len(doc["bbox"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # nothing written with --json -

    code, out, _ = run(["predict", str(converted), str(folder / "*.png"), "--json", "-", *TINY], capsys)
    assert code == 0 and len(json.loads(out)["images"]) == 2
    assert run(["predict", str(converted), str(folder / "*.gif"), *TINY], capsys)[0] == 2


def test_predict_default_folder_and_missing_parents(converted, golden_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(["predict", str(converted), str(golden_dir / "images" / "chelsea.png"), *TINY], capsys)[0] == 0
    assert (tmp_path / "predict-seeded" / "results_bbox.json").is_file()
    deep = tmp_path / "a" / "b" / "c"
    assert run(["predict", str(converted), str(golden_dir / "images" / "chelsea.png"), "-o", str(deep), *TINY],
               capsys)[0] == 0
    assert (deep / "images.json").is_file()


def test_predict_with_a_classifier_leaves_no_folder(tmp_path, capsys):
    from gnconvert.architecture import classifier_r50_gn

    arch = classifier_r50_gn()
    mapped = detectron_to_torch(seeded_blobs(arch, 1), arch)
    ckpt = tmp_path / "cls.safetensors"
    save_converted(ckpt, mapped.state_dict, arch, {}, mapped.dropped, None)
    out = tmp_path / "out"
    code, _, err = run(["predict", str(ckpt), str(ckpt), "-o", str(out)], capsys)
    assert code == 2 and "classifier" in err and not out.exists()


# --------------------------------------------------------------------------- 6. cfg keys and --opts
@pytest.mark.parametrize("text,message", [
    ("TEST:\n  SCALEZ: 600\n", "no config key TEST.SCALEZ (did you mean TEST.SCALE?)"),
    ("FOO_UNKNOWN: 1\n", "no config key FOO_UNKNOWN"),
    ("TEST:\n  SCALES: (600,)\n", "renamed TEST.SCALES to TEST.SCALE"),
])
def test_unknown_config_keys_are_rejected_like_detectron(tmp_path, capsys, text, message):
    from gnconvert.architecture import classifier_r50_gn
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle

    pkl = tmp_path / "R-50-GN.pkl"
    write_detectron_pickle(pkl, seeded_blobs(classifier_r50_gn(), 1), layout="bare")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(text)
    code, _, err = run(["inspect", str(pkl), "--config", str(cfg)], capsys)
    assert code == 2 and message in err


def test_opts_override_test_settings_of_converted_checkpoints(converted, capsys):
    code, out, _ = run(["inspect", str(converted), "--json", "--opts", "TEST.SCALE", "600", "TEST.MAX_SIZE", "1000"],
                       capsys)
    assert code == 0
    test = json.loads(out)["settings"]["test"]
    assert (test["scale"], test["max_size"]) == (600, 1000)
    for opts, message in ((["TEST.SCALEZ", "600"], "no config key TEST.SCALEZ"),
                          (["MODEL.NUM_CLASSES", "3"], "fixed by its weights"),
                          (["TEST.SCALE", "big"], "takes an integer"),
                          (["TEST.SCALE"], "KEY VALUE pairs")):
        code, _, err = run(["inspect", str(converted), "--opts", *opts], capsys)
        assert code == 2 and message in err, err


# --------------------------------------------------------------------------- 7. raw tracebacks
@pytest.mark.parametrize("url", ["127.0.0.1:8765", "ftp://mirror.example/detectron", "file://"])
def test_malformed_base_url_is_one_line(gnconvert_env, monkeypatch, capsys, url):
    monkeypatch.setenv("GNCONVERT_BASE_URL", url)
    code, _, err = run(["fetch", "48616381"], capsys)
    assert code == 2 and "GNCONVERT_BASE_URL" in one_line_error(err)


def test_file_mirror_fetches_and_verifies(gnconvert_env, detectron_server, monkeypatch, tmp_path):
    from gnconvert.zoo import download

    payload = os.urandom(300_000)
    rels = detectron_server.publish_model("48616381", model=payload)
    monkeypatch.setenv("GNCONVERT_BASE_URL", (tmp_path / "server").resolve().as_uri())
    path = download.fetch("48616381")["model"]
    assert path.read_bytes() == payload and path == gnconvert_env / rels["model"]
    assert detectron_server.log == []  # nothing went over HTTP


def test_failed_fetch_leaves_no_folders_or_lock_files_beside_models(gnconvert_env, detectron_server, capsys):
    code, _, err = run(["fetch", "48616381"], capsys)  # nothing published: HTTP 404
    assert code == 1 and "404" in err
    leftovers = [p for p in gnconvert_env.rglob("*") if ".locks" not in p.parts and p.name != ".locks"]
    assert leftovers == []


def test_selftest_workdir_problems_are_one_line(tmp_path, capsys):
    code, _, err = run(["selftest", "--workdir", str(tmp_path / "missing")], capsys)
    assert code == 2 and "--workdir" in one_line_error(err)


# --------------------------------------------------------------------------- 8. TorchScript needs torchvision
def test_archive_says_it_needs_torchvision_and_self_check_reads_its_operators(tmp_path):
    from gnconvert.checkpoint.converted import ConvertedCheckpoint
    from gnconvert.export.torchscript import LOADING, extra_files, operators

    arch = gn_r50_fpn()
    files = extra_files(ConvertedCheckpoint(state_dict={}, arch=arch))
    assert "import torch, torchvision" in files["README.txt"] == LOADING
    assert json.loads(files["requirements.json"])["import_before_loading"] == ["torchvision"]

    archive = tmp_path / "fake.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fake/code/__torch__/m.py", "def forward(x):\n  y = ops.torchvision.roi_align(x)\n"
                                               "  return ops.gnconvert.group_norm(y) + ops.aten.add(y)\n")
    assert operators(archive) == ["gnconvert::group_norm", "torchvision::roi_align"]


# --------------------------------------------------------------------------- 9. smaller ones
def test_random_bytes_named_safetensors_and_python3_pickles_name_the_problem(tmp_path, capsys):
    import pickle

    junk = tmp_path / "model.safetensors"
    junk.write_bytes(os.urandom(4096))
    code, _, err = run(["inspect", str(junk)], capsys)
    assert code == 1 and "not a safetensors file" in err and "pickle" not in err
    py3 = tmp_path / "py3.pkl"
    with open(py3, "wb") as f:
        pickle.dump({"blobs": {"x": np.zeros(3, np.float32)}}, f, protocol=4)
    code, _, err = run(["inspect", str(py3)], capsys)
    assert code == 1 and str(py3) in err


def test_no_local_paths_in_provenance(tmp_path, capsys):
    from gnconvert.architecture import classifier_r50_gn
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle

    pkl = tmp_path / "deep" / "R-50-GN.pkl"
    pkl.parent.mkdir()
    write_detectron_pickle(pkl, seeded_blobs(classifier_r50_gn(), 1), layout="bare")
    out = tmp_path / "c.safetensors"
    assert run(["convert", str(pkl), "-o", str(out)], capsys)[0] == 0
    provenance = load_converted(out).provenance
    assert provenance["source_file"] == "R-50-GN.pkl" and str(tmp_path) not in json.dumps(provenance)
    assert provenance["source_md5"] == hashlib.md5(pkl.read_bytes()).hexdigest()


def test_onnx_body_takes_any_size(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from gnconvert.export.onnx import _parts
    from gnconvert.model import build_network

    arch = gn_r50_fpn()
    net = build_network(arch).eval()
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    module, example, inputs, names, axes = _parts(net, arch)["image_level"]
    buf = io.BytesIO()
    torch.onnx.export(module, (example,), buf, opset_version=17, dynamo=False, input_names=inputs,
                      output_names=names, dynamic_axes=axes)
    x = torch.randn(1, 3, 100, 150)  # not multiples of 32
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(names, {"images": x.numpy()})
    with torch.no_grad():
        want = net(torch.nn.functional.pad(x, [0, 10, 0, 28]))  # Detectron's zero padding to 128 x 160
    for g, w in zip(got, [t for group in want for t in group]):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)


def test_drawing_decodes_only_the_drawn_masks(monkeypatch):
    from pycocotools import mask as mask_util

    from gnconvert.results.detections import Detections
    from gnconvert.results.draw import draw_detections

    h, w = 300, 400
    masks = np.zeros((50, h, w), np.uint8)
    masks[:, 10:50, 20:80] = 1
    rles = [dict(r, counts=r["counts"].decode()) for r in mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))]
    scores = np.linspace(0.06, 0.99, 50).astype(np.float32)
    dets = Detections(boxes=np.tile(np.float32([20, 10, 79, 49]), (50, 1)), scores=scores,
                      classes=np.ones(50, np.int64), image_size=(h, w), masks_rle=rles)
    decoded = []
    real = mask_util.decode
    monkeypatch.setattr(mask_util, "decode", lambda rle: decoded.append(1) or real(rle))
    image = np.zeros((h, w, 3), np.uint8)
    out = draw_detections(image, dets, score_thresh=0.9)
    assert len(decoded) == int((scores >= 0.9).sum()) and out[30, 50].any() and not out[200, 300].any()


# --------------------------------------------------------------------------- what users expected
def test_api_takes_pil_rgb_arrays_and_tensors(golden_dir):
    from PIL import Image

    from gnconvert.inference.preprocess import load_image

    path = golden_dir / "images" / "chelsea.png"
    bgr = cv2.imread(str(path))
    assert np.array_equal(load_image(Image.open(path)), bgr)
    assert np.array_equal(load_image(bgr[:, :, ::-1].copy(), channel_order="RGB"), bgr)
    assert np.array_equal(load_image(torch.from_numpy(bgr)), bgr)
    with pytest.raises(UsageError, match="channel_order"):
        load_image(bgr, channel_order="GBR")


def test_gnconvert_exports_detections_and_load_defaults_to_auto():
    import inspect

    import gnconvert
    import gnconvert.results.detections
    from gnconvert import Detections

    assert Detections is gnconvert.results.detections.Detections and "Detections" in dir(gnconvert)
    assert inspect.signature(gnconvert.load).parameters["device"].default == "auto"


def test_classifier_predicts_top5_imagenet_classes(tmp_path):
    from gnconvert.api import build_model
    from gnconvert.architecture import classifier_r50_gn
    from gnconvert.checkpoint.converted import ConvertedCheckpoint

    arch = classifier_r50_gn()
    mapped = detectron_to_torch(seeded_blobs(arch, 1), arch)
    model = build_model(ConvertedCheckpoint(state_dict=mapped.state_dict, arch=arch), "cpu")
    means = np.array(arch.pixel_means)
    image = np.broadcast_to(np.round(means).astype(np.uint8), (300, 400, 3)).copy()
    top = model.predict(image)
    assert len(top) == 5 and all(a.probability >= b.probability for a, b in zip(top, top[1:]))
    # the image minus PIXEL_MEANS is (almost) zero everywhere: the same classes as a zero input
    with torch.no_grad():
        offset = torch.from_numpy((np.round(means) - means).astype(np.float32))[None, :, None, None]
        probs = torch.softmax(model(offset.expand(1, 3, 224, 224)), dim=1)[0]
    assert [c.index for c in top] == torch.topk(probs, 5).indices.tolist()
    assert top[0].name == __import__("torchvision").models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"][top[0].index]
