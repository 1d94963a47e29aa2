"""`gnconvert predict` end to end: a Detectron .pkl in, Detectron's detections out as COCO results."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
from pycocotools import mask as mask_util

from gnconvert.results import coco_categories


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gnconvert", "predict", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_predict_writes_detectrons_detections(seeded_pickle, golden_dir, tmp_path):
    image = golden_dir / "images" / "grace_hopper.jpg"
    out = tmp_path / "out"
    proc = _run(seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn"), image, "-o", out)
    assert proc.returncode == 0, proc.stderr

    ref = json.loads((golden_dir / "detectron" / "R-50-FPN-GN_seed1.json").read_text())["grace_hopper.jpg"]
    bbox = json.loads((out / "results_bbox.json").read_text())
    segm = json.loads((out / "results_segm.json").read_text())
    assert len(bbox) == len(segm) == len(ref["detections"])
    assert {e["image_id"] for e in bbox} == {1}
    entry = json.loads((out / "images.json").read_text())[0]
    assert entry["file_name"] == image.name  # no local paths in what is shared
    assert entry["sha256"] == __import__("hashlib").sha256(image.read_bytes()).hexdigest()

    # every Detectron detection is in our file: same COCO category, box (x, y, w+1, h+1) IoU >= 0.99, score
    ours_xywh = np.array([e["bbox"] for e in bbox])
    ours_cat = np.array([e["category_id"] for e in bbox])
    for d in ref["detections"]:
        x1, y1, x2, y2 = d["bbox_xyxy"]
        ref_xywh = np.array([[x1, y1, x2 - x1 + 1, y2 - y1 + 1]])
        iou = mask_util.iou(ours_xywh, ref_xywh, [0])[:, 0]
        iou[ours_cat != coco_categories.coco_id(d["category_index"])] = 0
        k = int(np.argmax(iou))
        assert iou[k] >= 0.99
        assert abs(bbox[k]["score"] - d["score"]) <= 1e-3
        assert isinstance(segm[k]["segmentation"]["counts"], str)
        ours_rle = dict(segm[k]["segmentation"], counts=segm[k]["segmentation"]["counts"].encode())
        ref_rle = dict(d["segmentation"], counts=d["segmentation"]["counts"].encode())
        assert mask_util.iou([ours_rle], [ref_rle], [0])[0, 0] >= 0.97

    png = cv2.imread(str(out / "0001_grace_hopper.png"))
    assert png is not None and png.shape == cv2.imread(str(image)).shape
    assert not np.array_equal(png, cv2.imread(str(image))), "detections must be drawn"


def test_predict_bad_inputs_fail_cleanly(tmp_path, golden_dir):
    out = tmp_path / "out"
    proc = _run("/definitely/missing.pkl", golden_dir / "images" / "chelsea.png", "-o", out)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "missing.pkl" in proc.stderr

    proc = _run("48616381", tmp_path / "nope.jpg", "-o", out)
    assert proc.returncode == 2 and "nope.jpg" in proc.stderr

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    fake_pkl = tmp_path / "model.pkl"
    fake_pkl.write_text("<html>404</html>")
    proc = _run(fake_pkl, not_an_image, "-o", out)
    assert proc.returncode != 0 and "model.pkl" in proc.stderr
    assert not any(out.glob("*.json")), "nothing written when the model cannot be read"
