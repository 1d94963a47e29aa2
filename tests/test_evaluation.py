"""Evaluation machinery on real data: Detectron's golden detections as COCO ground truth.

Expected values come from independent reasoning: a results set identical to the
ground truth scores AP 100; relabelling every detection of a category into one with
no ground truth leaves that category at AP 0 and the others untouched.
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from coco_fixture import GoldenPredictor, build_coco, golden_results

from gnconvert.errors import UsageError
from gnconvert.evaluation import (
    CocoEvaluator,
    detectron_order,
    evaluate,
    find_layout,
    from_results,
    load_annotations,
    reference,
    to_results,
)
from gnconvert.evaluation.coco_layout import LayoutError
from gnconvert.evaluation.dataset import CocoImages, image_loader
from gnconvert.fidelity import golden_format
from gnconvert.results import coco_categories
from gnconvert.results.detections import Detections

GN = "R-50-FPN-GN_seed1"
BN = "R-50-FPN-BN_seed1"  # 3 images, many classes


def _results(golden_dir, info, tag, swap=None):
    pred = GoldenPredictor(golden_dir, tag, swap=swap)
    bbox, segm = [], []
    for image_id, name in sorted(info["ids"].items()):
        b, s = to_results(image_id, pred.predict(cv2.imread(str(golden_dir / "images" / name))))
        bbox += b
        segm += s
    return detectron_order(bbox), detectron_order(segm)


@pytest.fixture(scope="module")
def gn_coco(golden_dir, tmp_path_factory):
    return build_coco(tmp_path_factory.mktemp("gn"), golden_dir, GN, layout="2014")


@pytest.fixture(scope="module")
def bn_coco(golden_dir, tmp_path_factory):
    return build_coco(tmp_path_factory.mktemp("bn"), golden_dir, BN, layout="2017")


# --- COCOeval on Detectron's own detections ---------------------------------------------------

def test_detectron_detections_score_100_against_themselves(golden_dir, gn_coco):
    bbox, segm = _results(golden_dir, gn_coco, GN)
    assert len(bbox) == len(segm) == 500
    out = evaluate(load_annotations(gn_coco["annotations"]), {"bbox": bbox, "segm": segm}, list(gn_coco["ids"]))
    for t in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert out[t]["metrics"][metric] == pytest.approx(100.0, abs=1e-9), (t, metric)
        assert "Average Precision" in out[t]["summary"]


def test_swapping_a_class_away_drops_ap_to_zero(golden_dir, gn_coco):
    # every GN seed-1 detection is class 61 (dining table); relabelled as person (1), the only
    # category with ground truth has no detections left: AP 0.  Person has no ground truth: excluded.
    assert {d["category_index"] for r in golden_results(golden_dir, GN).values() for d in r["detections"]} == {61}
    bbox, segm = _results(golden_dir, gn_coco, GN, swap=(61, 1))
    out = evaluate(load_annotations(gn_coco["annotations"]), {"bbox": bbox, "segm": segm}, list(gn_coco["ids"]))
    assert out["bbox"]["metrics"]["AP"] == 0.0
    assert out["segm"]["metrics"]["AP"] == 0.0


def test_swapping_one_of_many_classes_costs_exactly_its_share(golden_dir, bn_coco):
    ann = load_annotations(bn_coco["annotations"])
    present = sorted({a["category_id"] for a in ann["annotations"]})
    absent = next(c for c in coco_categories.COCO_IDS if c not in present)
    a = coco_categories.COCO_TO_CONTIGUOUS[present[0]]
    b = coco_categories.COCO_TO_CONTIGUOUS[absent]
    ev = CocoEvaluator(ann)
    bbox, _ = _results(golden_dir, bn_coco, BN)
    assert ev.evaluate(bbox, "bbox", list(bn_coco["ids"]))["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    swapped, _ = _results(golden_dir, bn_coco, BN, swap=(a, b))
    got = ev.evaluate(swapped, "bbox", list(bn_coco["ids"]))["metrics"]["AP"]
    assert got == pytest.approx(100.0 * (len(present) - 1) / len(present), abs=1e-9)


def test_evaluation_restricted_to_given_images(golden_dir, gn_coco):
    bbox, _ = _results(golden_dir, gn_coco, GN)
    first = sorted(gn_coco["ids"])[:2]
    ev = CocoEvaluator(load_annotations(gn_coco["annotations"]))
    # only the first two images' detections, evaluated on those two images: nothing is missing
    mine = [e for e in bbox if e["image_id"] in first]
    assert ev.evaluate(mine, "bbox", first)["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    # the same detections against all five images: 3/5 of the ground truth unmatched
    assert ev.evaluate(mine, "bbox", list(gn_coco["ids"]))["metrics"]["AP"] < 50.0


def test_no_detections_at_all_scores_zero(gn_coco):
    out = evaluate(load_annotations(gn_coco["annotations"]), {"bbox": [], "segm": []}, list(gn_coco["ids"]))
    assert out["bbox"]["metrics"]["AP"] == 0.0 and out["segm"]["metrics"]["AP"] == 0.0


def test_faster_coco_eval_gives_pycocotools_numbers(golden_dir, bn_coco):
    pytest.importorskip("faster_coco_eval")
    bbox, segm = _results(golden_dir, bn_coco, BN)
    rng = np.random.RandomState(0)  # jitter boxes and scores so the numbers are not all 100
    for e in bbox:
        e["bbox"] = [v + float(rng.normal(0, 2.0)) for v in e["bbox"][:2]] + e["bbox"][2:]
        e["score"] = float(rng.uniform())
    for e in segm:
        e["score"] = float(rng.uniform())
    segm = segm[::2]
    ann = load_annotations(bn_coco["annotations"])
    ref = evaluate(ann, {"bbox": bbox, "segm": segm}, list(bn_coco["ids"]), "pycocotools")
    fast = evaluate(ann, {"bbox": bbox, "segm": segm}, list(bn_coco["ids"]), "faster-coco-eval")
    assert 5.0 < ref["bbox"]["metrics"]["AP"] < 95.0
    for t in ("bbox", "segm"):
        for k, v in ref[t]["metrics"].items():
            assert fast[t]["metrics"][k] == pytest.approx(v, abs=1e-9, nan_ok=True), (t, k)


# --- results format ---------------------------------------------------------------------------

def test_results_entries_follow_detectron_format():
    rle = {"size": [10, 20], "counts": b"PP10"}
    dets = Detections(boxes=np.array([[1.5, 2.25, 10.5, 4.25], [0, 0, 0.5, 0.5]], np.float32),
                      scores=np.array([0.9, 0.1], np.float32), classes=np.array([12, 80]),
                      image_size=(10, 20), masks_rle=[rle, {"size": [10, 20], "counts": "PP11"}])
    bbox, segm = to_results(42, dets)
    # +1 widths; contiguous 12 is COCO id 13 (stop sign), 80 is 90 (toothbrush)
    assert bbox[0] == {"image_id": 42, "category_id": 13, "bbox": [1.5, 2.25, 10.0, 3.0],
                       "score": float(np.float32(0.9))}
    assert bbox[1]["bbox"] == [0.0, 0.0, 1.5, 1.5] and bbox[1]["category_id"] == 90
    assert segm[0] == {"image_id": 42, "category_id": 13, "segmentation": {"size": [10, 20], "counts": "PP10"},
                       "score": float(np.float32(0.9))}
    assert isinstance(segm[1]["segmentation"]["counts"], str)
    assert list(bbox[0]) == ["image_id", "category_id", "bbox", "score"]  # Detectron's key order
    json.dumps(bbox + segm)  # plain JSON types only


def test_detectron_order_is_class_then_image_then_detection():
    e = lambda img, cat, k: {"image_id": img, "category_id": cat, "k": k}  # noqa: E731
    entries = [e(5, 90, 0), e(5, 1, 1), e(5, 1, 2), e(3, 90, 3), e(3, 13, 4), e(3, 1, 5)]
    assert [x["k"] for x in detectron_order(entries)] == [5, 1, 2, 4, 3, 0]


def test_results_round_trip_exactly(golden_dir):
    for record in golden_results(golden_dir, BN).values():
        dets = golden_format.detections_from_json(record)
        back = from_results(*to_results(7, dets), image_size=dets.image_size)
        np.testing.assert_array_equal(back.boxes, dets.boxes)
        np.testing.assert_array_equal(back.scores, dets.scores)
        np.testing.assert_array_equal(back.classes, dets.classes)
        assert [m["counts"] for m in back.masks_rle] == [m["counts"] for m in dets.masks_rle]


def test_results_boxes_equal_the_ground_truth_written_by_hand(golden_dir, gn_coco):
    # the fixture writes ground truth straight from golden xyxy; our writer must agree to the bit
    ann = load_annotations(gn_coco["annotations"])
    bbox, _ = _results(golden_dir, gn_coco, GN)
    gt = sorted((a["image_id"], tuple(a["bbox"])) for a in ann["annotations"])
    assert sorted((e["image_id"], tuple(e["bbox"])) for e in bbox) == gt


# --- annotation files and layouts -------------------------------------------------------------

def test_both_layouts_are_detected(golden_dir, gn_coco, bn_coco):
    a = find_layout(coco_root=gn_coco["root"])
    assert (a.name, a.annotations.name, a.images.name) == ("coco_2014_minival", "instances_minival2014.json", "val2014")
    b = find_layout(coco_root=bn_coco["root"])
    assert (b.name, b.annotations.name, b.images.name) == ("coco_2017_val", "instances_val2017.json", "val2017")
    c = find_layout(annotations=gn_coco["annotations"], images=gn_coco["images"])
    assert c == a


def test_missing_pieces_are_named_with_where_to_get_them(tmp_path):
    with pytest.raises(LayoutError, match=r"instances_minival2014.json with val2014/.*val2017.zip"):
        find_layout(coco_root=tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(LayoutError, match=r"val2017 is missing .*zips/val2017.zip"):
        find_layout(coco_root=tmp_path)
    with pytest.raises(LayoutError, match="does not exist"):
        find_layout(coco_root=tmp_path / "nope")
    with pytest.raises(LayoutError, match="--coco-root"):
        find_layout()
    with pytest.raises(LayoutError, match="is a folder"):
        find_layout(annotations=tmp_path, images=tmp_path)
    for e in (LayoutError,):
        assert issubclass(e, UsageError)


@pytest.mark.parametrize("content, message", [
    ("not json at all", "not readable JSON"),
    ('{"images": []}', "no annotations, categories"),
    ('[1, 2]', "no images"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}', "not COCO's 80"),
])
def test_annotation_files_that_are_not_coco_are_refused(tmp_path, content, message):
    path = tmp_path / "instances_val2017.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as err:
        load_annotations(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- image decoding ---------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_images_decode_in_workers_and_bad_ones_say_why(golden_dir, tmp_path):
    # OpenCV's thread pool running in this process first (as after the model's cv2.resize): a
    # worker forked from here would hang in cv2, so the loader must start clean workers
    cv2.resize(np.zeros((1500, 1500), np.float32), None, fx=1.7, fy=1.7)
    good = golden_dir / "images" / "chelsea.png"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items = [(1, good), (2, corrupt), (3, tmp_path / "missing.jpg"), (4, golden_dir / "images" / "grace_hopper.jpg")]
    loaded = [x for batch in image_loader(items, batch_size=3, workers=2) for x in batch]
    assert [x.image_id for x in loaded] == [1, 2, 3, 4]
    np.testing.assert_array_equal(loaded[0].image, cv2.imread(str(good)))
    assert loaded[1].image is None and "could not decode" in loaded[1].error
    assert loaded[2].image is None and "not found" in loaded[2].error
    assert loaded[3].image.shape == (600, 512, 3) and loaded[3].error is None
    assert len(CocoImages(items)) == 4


# --- comparison with Detectron's own detections -----------------------------------------------

def test_reference_comparison(golden_dir, bn_coco):
    bbox, _ = _results(golden_dir, bn_coco, BN)
    ids = list(bn_coco["ids"])
    same = reference.compare(bbox, bbox, ids)
    assert same["matched"] == same["detectron_detections"] == len(bbox) and same["matched_share"] == 1.0
    assert same["box_max_abs_diff_px"]["max"] == 0.0 and same["score_abs_diff"]["max"] == 0.0
    # scores 0.001 lower: every pair still matches, each differs by 0.001 in score
    lower = [dict(e, score=e["score"] - 0.001) for e in bbox]
    c = reference.compare(lower, bbox, ids)
    assert c["matched_share"] == 1.0
    assert c["score_abs_diff"]["median"] == pytest.approx(0.001, abs=1e-12)
    # another category: nothing matches (same class is required)
    unused = next(c for c in coco_categories.COCO_IDS if c not in {e["category_id"] for e in bbox})
    other = [dict(e, category_id=unused) for e in bbox]
    assert reference.compare(other, bbox, ids)["matched"] == 0
    # restricted to one image
    one = reference.compare(bbox, bbox, ids[:1])
    assert one["detectron_detections"] == sum(e["image_id"] == ids[0] for e in bbox)
    assert math.isnan(reference.compare([], [], ids)["matched_share"])


def test_golden_ground_truth_is_coco_with_detectrons_plus_one_widths():
    """The ground truth the verify tests grade against, checked by hand: Detectron's "+1" box
    widths, COCO's sparse category ids (Detectron's class 12 is COCO's 13: COCO skips id 12),
    the mask's pixel count as its area, and the RLE kept as Detectron wrote it."""
    from pycocotools import mask as mask_util

    from gnconvert.fidelity.golden_coco import ground_truth

    mask = np.zeros((30, 40), np.uint8, order="F")
    mask[5:15, 10:30] = 1  # 10 x 20 = 200 pixels
    rle = mask_util.encode(mask)
    rle = {"size": [30, 40], "counts": rle["counts"].decode("ascii")}
    record = {"image_shape": [30, 40, 3], "detections": [
        {"bbox_xyxy": [10.0, 5.0, 29.0, 14.0], "category_index": 12, "score": 0.9, "segmentation": rle},
        {"bbox_xyxy": [0.5, 1.25, 0.5, 1.25], "category_index": 1, "score": 0.8, "segmentation": rle},
    ]}
    gt = ground_truth([(139, "a.jpg", record)], "d")
    assert gt["images"] == [{"id": 139, "file_name": "a.jpg", "height": 30, "width": 40}]
    a, b = gt["annotations"]
    assert a["bbox"] == [10.0, 5.0, 20.0, 10.0] and b["bbox"] == [0.5, 1.25, 1.0, 1.0]
    assert a["category_id"] == 13 and b["category_id"] == 1
    assert a["area"] == 200.0 and a["segmentation"] == rle and a["iscrowd"] == 0
    assert [x["id"] for x in gt["annotations"]] == [1, 2] and {x["image_id"] for x in gt["annotations"]} == {139}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert len(names) == 80 and names[13] == "stop sign" and 12 not in names
