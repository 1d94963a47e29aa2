"""`gnconvert verify` end to end on a real COCO-format dataset made from Detectron's outputs.

Ground truth = Detectron's own detections on the golden images (tests/coco_fixture.py).
The golden predictor returns exactly those detections, so the verify loop must report
AP 100; the seeded checkpoint through the real model must reproduce them (AP >= 97),
and a model with two class rows swapped must FAIL.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from coco_fixture import GoldenPredictor, build_coco, golden_results

from gnconvert.cli import main
from gnconvert.errors import ParityError, UsageError
from gnconvert.evaluation import VerifyConfig, detectron_order, find_layout, run_verify, to_results
from gnconvert.evaluation.coco_eval import AnnotationError

GN = "R-50-FPN-GN_seed1"
FIXTURE = Path(__file__).resolve().parent / "coco_fixture.py"
RESULTS = ("bbox_{}_results.json", "segmentations_{}_results.json")


def _run(golden_dir, info, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    predictor = kw.pop("predictor", None) or GoldenPredictor(golden_dir, GN)
    how = {k: kw.pop(k) for k in ("echo", "warn", "dist") if k in kw}
    return run_verify(predictor, VerifyConfig(find_layout(coco_root=info["root"]), out, source="golden", **kw), **how)


def _bytes(out: Path, dataset: str):
    return [(out / name.format(dataset)).read_bytes() for name in RESULTS]


@pytest.fixture(scope="module")
def coco14(golden_dir, tmp_path_factory):
    return build_coco(tmp_path_factory.mktemp("c14"), golden_dir, GN, layout="2014")


@pytest.fixture(scope="module")
def coco17(golden_dir, tmp_path_factory):
    return build_coco(tmp_path_factory.mktemp("c17"), golden_dir, GN, layout="2017")


@pytest.mark.parametrize("layout", ["2014", "2017"])
def test_golden_detections_verify_at_ap_100_and_pass(golden_dir, coco14, coco17, tmp_path, layout):
    info = coco14 if layout == "2014" else coco17
    printed = []
    report = _run(golden_dir, info, tmp_path, published={"box_ap": 100.0, "mask_ap": 100.0}, tolerance=0.0,
                  echo=printed.append)
    dataset = "coco_2014_minival" if layout == "2014" else "coco_2017_val"
    assert report["dataset"] == dataset and report["images_evaluated"] == 5
    assert report["metrics"]["bbox"]["AP"] == pytest.approx(100.0) == report["metrics"]["segm"]["AP"]
    assert report["verdict"]["overall"] == "PASS"
    table = printed[0]
    assert "box AP" in table and "mask AP" in table and "PASS" in table and "AP50" in table
    # the results files hold Detectron's own detections in Detectron's order
    golden = golden_results(golden_dir, GN)
    expected_bbox = []
    for image_id, name in sorted(info["ids"].items()):
        im = cv2.imread(str(golden_dir / "images" / name))
        expected_bbox += to_results(image_id, GoldenPredictor(golden_dir, GN).predict(im))[0]
    assert json.loads(_bytes(tmp_path, dataset)[0]) == detectron_order(expected_bbox)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["verdict"]["overall"] == "PASS" and on_disk["images_evaluated"] == 5
    assert not (tmp_path / "partial").exists()  # nothing half-done left behind
    assert sum(len(r["detections"]) for r in golden.values()) == len(expected_bbox)


def test_swapped_classes_fail_with_a_report(golden_dir, coco17, tmp_path):
    with pytest.raises(ParityError, match=r"verify FAILED.*box AP 0.00 vs published 100.0"):
        _run(golden_dir, coco17, tmp_path, predictor=GoldenPredictor(golden_dir, GN, swap=(61, 1)),
             published={"box_ap": 100.0, "mask_ap": 100.0}, tolerance=3.0, echo=lambda s: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["bbox"]["verdict"] == "FAIL" and report["verdict"]["segm"]["verdict"] == "FAIL"
    assert report["verdict"]["overall"] == "FAIL"


def test_no_catalog_entry_reports_ap_without_verdict(golden_dir, coco14, tmp_path):
    printed = []
    report = _run(golden_dir, coco14, tmp_path, echo=printed.append)
    assert report["verdict"] is None and "verdict: none" in printed[0]


def test_limit_evaluates_the_first_images_only(golden_dir, coco14, tmp_path):
    pred = GoldenPredictor(golden_dir, GN)
    report = _run(golden_dir, coco14, tmp_path, predictor=pred, limit=2, echo=lambda s: None)
    assert report["images_evaluated"] == 2 and pred.calls == 2
    assert report["metrics"]["bbox"]["AP"] == pytest.approx(100.0)  # only those 2 images' ground truth
    ids = {e["image_id"] for e in json.loads(_bytes(tmp_path, "coco_2014_minival")[0])}
    assert ids == set(sorted(coco14["ids"])[:2])
    with pytest.raises(UsageError, match="--limit 0 selects no images"):
        _run(golden_dir, coco14, tmp_path / "zero", limit=0)


def test_undecodable_image_is_named_counted_and_skipped(golden_dir, tmp_path):
    info = build_coco(tmp_path / "coco", golden_dir, GN, layout="2017")
    bad_id = sorted(info["ids"])[1]
    bad = next((info["images"]).glob(f"{bad_id:012d}.*"))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    warnings = []
    # a dataset with an unreadable image is not minival: INCOMPLETE, after writing the report
    with pytest.raises(ParityError, match="INCOMPLETE.*1 of 5 images could not be read"):
        _run(golden_dir, info, tmp_path / "out", workers=2, warn=warnings.append, echo=lambda s: None)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == {"overall": "INCOMPLETE", "missing": 1}
    assert len(warnings) == 1 and bad.name in warnings[0] and str(bad_id) in warnings[0]
    assert report["images_skipped"] == 1 and report["skipped"][0]["image_id"] == bad_id
    assert report["images_evaluated"] == 4
    assert report["metrics"]["segm"]["AP"] == pytest.approx(100.0)  # evaluated on the 4 that decoded


def test_nothing_decodable_is_an_error(golden_dir, tmp_path):
    info = build_coco(tmp_path / "coco", golden_dir, GN, layout="2017")
    for p in info["images"].iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(Exception, match="could be decoded"):
        _run(golden_dir, info, tmp_path / "out", warn=lambda s: None)


def test_reference_results_are_evaluated_and_compared(golden_dir, coco14, tmp_path):
    # Detectron's own detections as the "published" reference files
    _run(golden_dir, coco14, tmp_path / "ref", echo=lambda s: None)
    ref = {"bbox": tmp_path / "ref" / RESULTS[0].format("coco_2014_minival"),
           "segm": tmp_path / "ref" / RESULTS[1].format("coco_2014_minival")}
    printed = []
    report = _run(golden_dir, coco14, tmp_path / "ours", reference=ref, limit=3, echo=printed.append)
    r = report["reference"]
    assert r["metrics"]["bbox"]["AP"] == pytest.approx(100.0) and r["metrics"]["segm"]["AP"] == pytest.approx(100.0)
    assert r["comparison"]["images"] == 3 and r["comparison"]["matched_share"] == 1.0
    assert r["comparison"]["detectron_detections"] == 300  # restricted to the --limit images
    assert "Detectron's own detections" in printed[0] and "matched 300/300" in printed[0]


def _partial_records(out: Path) -> int:
    n = 0
    for p in (out / "partial").glob("*.jsonl"):
        n += max(0, p.read_text().count("\n") - 1)
    return n


def test_resume_after_kill_gives_the_same_results(golden_dir, tmp_path):
    info = build_coco(tmp_path / "coco", golden_dir, GN, layout="2014", copies=4)  # 20 images
    _run(golden_dir, info, tmp_path / "straight", echo=lambda s: None)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(FIXTURE), "--coco-root", str(info["root"]), "--output", str(out),
           "--golden", str(golden_dir)]
    proc = subprocess.Popen(cmd + ["--delay", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _partial_records(out) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _partial_records(out)
    assert 6 <= done < 20
    assert not (out / RESULTS[0].format("coco_2014_minival")).exists()
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["resumed_images"] == done
    assert report["timing"]["predicted_images"] == 20 - done
    assert _bytes(out, "coco_2014_minival") == _bytes(tmp_path / "straight", "coco_2014_minival")


def test_resume_refuses_another_runs_partial_results(golden_dir, coco14, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "rank0-1-x.jsonl").write_text(json.dumps({"fingerprint": {"source": "other"}}) + "\n")
    with pytest.raises(UsageError, match="another run"):
        _run(golden_dir, coco14, tmp_path, resume=True)
    warnings = []  # without --resume the old partial results are dropped, and we say so
    report = _run(golden_dir, coco14, tmp_path, warn=warnings.append, echo=lambda s: None)
    assert report["images_evaluated"] == 5 and "discarding the partial results" in warnings[0]


def test_two_gloo_processes_give_byte_identical_results(golden_dir, tmp_path):
    info = build_coco(tmp_path / "coco", golden_dir, GN, layout="2017", copies=2)  # 10 images
    _run(golden_dir, info, tmp_path / "one", echo=lambda s: None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(FIXTURE), "--coco-root", str(info["root"]), "--output", str(tmp_path / "two"),
                           "--golden", str(golden_dir), "--workers", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2 and report["images_evaluated"] == 10
    assert _bytes(tmp_path / "two", "coco_2017_val") == _bytes(tmp_path / "one", "coco_2017_val")


# --- the command line -------------------------------------------------------------------------

def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", *map(str, args)])
    return e.value.code, capsys.readouterr().err


def test_cli_bad_inputs_give_one_line_errors(coco14, tmp_path, capsys):
    code, err = _cli(["48616381", "--coco-root", tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, err = _cli(["48616381", "--coco-root", tmp_path], capsys)
    assert code == 2 and "instances_minival2014.json" in err and "val2017.zip" in err
    bad_ann = tmp_path / "instances_val2017.json"
    bad_ann.write_text("this is not json")
    code, err = _cli(["48616381", "--annotations", bad_ann, "--images", coco14["images"],
                      "--output", tmp_path / "o"], capsys)
    assert code == 2 and "not a COCO annotation file" in err
    code, err = _cli(["48616381", "--coco-root", coco14["root"], "--limit", "0", "--output", tmp_path / "o"], capsys)
    assert code == 2 and "--limit 0 selects no images" in err
    code, err = _cli([tmp_path / "model.pkl", "--coco-root", coco14["root"], "--reference-results"], capsys)
    assert code == 2 and "--reference-results needs a catalog model id" in err
    code, err = _cli(["48616381", "--coco-root", coco14["root"], "--tolerance", "-1"], capsys)
    assert code == 2 and "--tolerance" in err
    assert AnnotationError.__mro__[1] is UsageError


# --- the real model on the seeded checkpoint ---------------------------------------------------

def _seeded_checkpoint_with_swapped_rows(golden_dir, path: Path, a: int, b: int) -> Path:
    """The seeded R-50-FPN GN checkpoint with two classes' score rows swapped: a faithful
    conversion of an unfaithful model, which verify must fail."""
    from gnconvert.architecture import gn_r50_fpn
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
    from gnconvert.fidelity.seeded import blobs_checksum, seeded_blobs

    blobs = seeded_blobs(gn_r50_fpn(), seed=1)
    assert blobs_checksum(blobs)[:16] == "9a503c71c2c585e5"  # golden/README.md's checksum
    for name in ("cls_score_w", "cls_score_b"):
        blobs[name] = blobs[name].copy()
        blobs[name][[a, b]] = blobs[name][[b, a]]
    cfg = (golden_dir / "cfg" / "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml").read_text()
    write_detectron_pickle(path, blobs, cfg)
    return path


def test_seeded_checkpoint_verifies_at_97_or_more(seeded_pickle, coco14, tmp_path, capsys):
    pkl = seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn")
    code, err = _cli([pkl, "--coco-root", coco14["root"], "--device", "cpu", "--workers", "1", "--no-progress",
                      "--expect-box-ap", "100", "--expect-mask-ap", "100", "--tolerance", "3",
                      "--output", tmp_path / "out"], capsys)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"]["bbox"]["AP"] >= 97.0 and report["metrics"]["segm"]["AP"] >= 97.0, report["metrics"]
    assert code == 0 and report["verdict"]["overall"] == "PASS", err


@pytest.mark.slow
def test_seeded_checkpoint_with_swapped_class_rows_fails(golden_dir, coco17, tmp_path, capsys):
    pkl = _seeded_checkpoint_with_swapped_rows(golden_dir, tmp_path / "swapped.pkl", 61, 1)
    code, err = _cli([pkl, "--coco-root", coco17["root"], "--device", "cpu", "--workers", "1", "--no-progress",
                      "--expect-box-ap", "100", "--expect-mask-ap", "100", "--tolerance", "3",
                      "--output", tmp_path / "out"], capsys)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"]["bbox"]["AP"] < 50.0 and report["metrics"]["segm"]["AP"] < 50.0
    assert code == 1 and "verify FAILED" in err and report["verdict"]["overall"] == "FAIL"
