"""COCO box and mask AP of a results list, by pycocotools (default) or faster-coco-eval.

Both are handed the same ground-truth dict and the same results entries, restricted to
the images actually evaluated, so a `--limit` run measures those images only.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence

from gnconvert.errors import UsageError
from gnconvert.results import coco_categories

EVALUATORS = ("pycocotools", "faster-coco-eval")
IOU_TYPES = ("bbox", "segm")
# COCOeval.stats[0:6], in percent
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class AnnotationError(UsageError):
    """The annotation file is not a COCO instances file we can evaluate against."""


def load_annotations(path: Path) -> dict:
    """The annotation file as a dict, checked to be a COCO instances file with COCO's 80 classes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path} is not a COCO annotation file (not readable JSON: {e}); "
                              "pass instances_minival2014.json or instances_val2017.json") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise AnnotationError(f"{path} is not a COCO annotation file (no {', '.join(missing)}); "
                              "pass instances_minival2014.json or instances_val2017.json")
    cat_ids = sorted(int(c["id"]) for c in data["categories"])
    if cat_ids != coco_categories.COCO_IDS:
        raise AnnotationError(f"{path} has {len(cat_ids)} categories that are not COCO's 80 detection classes; "
                              "Detectron's models can only be evaluated on COCO instances annotations")
    return data


def _quiet(fn, *args, **kwargs):
    """Run a pycocotools call that prints, keeping what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def backend(evaluator: str):
    if evaluator == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    if evaluator == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise UsageError("--evaluator faster-coco-eval needs the faster-coco-eval package: "
                             "pip install 'gnconvert[fast-eval]'") from None
        return COCO, COCOeval_faster
    raise UsageError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")


class CocoEvaluator:
    """Ground truth loaded once, evaluated against any number of results lists."""

    def __init__(self, annotations: dict, evaluator: str = "pycocotools"):
        self.evaluator = evaluator
        coco_cls, self._eval_cls = backend(evaluator)
        self.gt = coco_cls()
        self.gt.dataset = copy.deepcopy(annotations) if evaluator != "pycocotools" else annotations
        _quiet(self.gt.createIndex)

    def _results(self, results: List[dict]):
        if results:
            dt, _ = _quiet(self.gt.loadRes, copy.deepcopy(results))
            return dt
        # loadRes cannot take an empty list: an empty results set scores 0 everywhere
        dt = type(self.gt)()
        dt.dataset = {"images": list(self.gt.dataset["images"]), "categories": list(self.gt.dataset["categories"]),
                      "annotations": []}
        _quiet(dt.createIndex)
        return dt

    def evaluate(self, results: List[dict], iou_type: str, image_ids: Sequence[int]) -> Dict[str, object]:
        """{'metrics': {AP, AP50, ...} in percent, 'summary': COCOeval's printed table}."""
        if iou_type not in IOU_TYPES:
            raise ValueError(iou_type)
        image_ids = sorted(int(i) for i in image_ids)
        wanted = set(image_ids)
        dt = self._results([r for r in results if int(r["image_id"]) in wanted])
        ev = self._eval_cls(self.gt, dt, iou_type)
        ev.params.imgIds = image_ids
        _quiet(ev.evaluate)
        _quiet(ev.accumulate)
        _, summary = _quiet(ev.summarize)
        stats = [float(s) for s in ev.stats[: len(METRICS)]]
        metrics = {m: (100.0 * s if s >= 0 else float("nan")) for m, s in zip(METRICS, stats)}
        return {"metrics": metrics, "summary": summary}


def evaluate(annotations: dict, results_by_type: Dict[str, List[dict]], image_ids: Sequence[int],
             evaluator: str = "pycocotools") -> Dict[str, dict]:
    """{'bbox': {...}, 'segm': {...}} for whichever result lists are given."""
    ev = CocoEvaluator(annotations, evaluator)
    return {t: ev.evaluate(results_by_type[t], t, image_ids) for t in IOU_TYPES if t in results_by_type}
