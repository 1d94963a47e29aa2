"""The verify loop: predict every image, save as we go, evaluate, judge, report.

Per-image results are appended to `OUTPUT/partial/*.jsonl` after every batch, so a run
killed at any point resumes (`resume=True`) from the images it had finished.  The final
results files are written in Detectron's format and order, so one process, many
processes and a resumed run give byte-identical files.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

from gnconvert.atomic import write_json_atomic
from gnconvert.errors import GnconvertError, ParityError, UsageError
from gnconvert.evaluation import reference as reference_mod
from gnconvert.evaluation.coco_eval import EVALUATORS, CocoEvaluator, backend, load_annotations
from gnconvert.evaluation.coco_layout import CocoLayout
from gnconvert.evaluation.dataset import image_loader
from gnconvert.evaluation.distributed import Workers
from gnconvert.evaluation.report import IOU_TYPES, format_report, verdicts, write_report
from gnconvert.results.coco_results import detectron_order, to_results
from gnconvert.results.partial import PartialResults


def _stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _prepare(layout: CocoLayout, limit: Optional[int]) -> Tuple[dict, List[Tuple[int, Path]]]:
    annotations = load_annotations(layout.annotations)
    images = sorted(annotations["images"], key=lambda im: int(im["id"]))
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit {limit} selects no images; give a positive number or leave it out")
        images = images[:limit]
    if not images:
        raise UsageError(f"{layout.annotations} lists no images")
    return annotations, [(int(im["id"]), layout.images / im["file_name"]) for im in images]


def predict_loop(predictor, todo, workers: Workers, partial: PartialResults, batch_size: int, num_workers: int,
                 progress: bool, warn: Callable[[str], None]) -> Tuple[Dict[int, dict], float, float, float]:
    """Run the predictor over this rank's images.

    Returns (records, loop seconds, predict seconds, startup seconds): the loop is timed from
    the first batch, so the one-off start of the decoding workers is reported on its own.
    """
    records: Dict[int, dict] = {}
    bar = tqdm(total=len(todo), unit="img", desc="verify", disable=not (progress and workers.is_main),
               dynamic_ncols=True)
    predict_s = 0.0
    begin = time.perf_counter()
    start = None
    try:
        for batch in image_loader(todo, batch_size=batch_size, workers=num_workers):
            if start is None:
                start = time.perf_counter()
            ok = [item for item in batch if item.image is not None]
            new = []
            for item in batch:
                if item.image is None:
                    warn(f"gnconvert: warning: skipped image {item.image_id} ({item.path}): {item.error}")
                    new.append({"image_id": item.image_id, "path": item.path, "error": item.error})
            if ok:
                t0 = time.perf_counter()
                outputs = predictor.predict_batch([item.image for item in ok])
                predict_s += time.perf_counter() - t0
                if len(outputs) != len(ok):
                    raise RuntimeError(f"predictor returned {len(outputs)} results for {len(ok)} images")
                for item, dets in zip(ok, outputs):
                    bbox, segm = to_results(item.image_id, dets)
                    new.append({"image_id": item.image_id, "bbox": bbox, "segm": segm})
            partial.append(new, workers.rank)
            for r in new:
                records[r["image_id"]] = r
            bar.update(len(batch))
    finally:
        bar.close()
        partial.close()
    end = time.perf_counter()
    start = end if start is None else start
    return records, end - start, predict_s, start - begin


def run_verify(predictor, layout: CocoLayout, output: Path, *, source: str, published: Optional[dict] = None,
               tolerance: float = 0.1, limit: Optional[int] = None, batch_size: int = 1, workers: int = 2,
               resume: bool = False, evaluator: str = "pycocotools", reference: Optional[Dict[str, Path]] = None,
               progress: bool = True, dist: Optional[Workers] = None, mode: Optional[Dict[str, Any]] = None,
               echo: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr) -> Optional[dict]:
    """Verify `predictor` on the COCO data of `layout`; returns the report (None on ranks > 0).

    `predictor` has `predict_batch(list of BGR arrays) -> list of Detections`, or is a
    zero-argument callable returning one (called only if there are images to run).

    `published` is the catalog's {'box_ap', 'mask_ap'}: with it each AP gets PASS/FAIL
    within `tolerance`, and a FAIL raises ParityError after the report is written.
    `reference` is {'bbox': path, 'segm': path} of Detectron's own results files.
    `mode` is the run mode's `to_dict()` (default: the exact one); a run's results all come from one mode.
    """
    dist = dist or Workers()
    if evaluator not in EVALUATORS:
        raise UsageError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")
    if batch_size < 1 or workers < 0:
        raise UsageError("--batch-size must be >= 1 and --workers >= 0")
    output = Path(output)
    if mode is None:
        from gnconvert.inference.modes import EXACT

        mode = EXACT.to_dict()
    fingerprint = {"source": str(source), "annotations": str(Path(layout.annotations).resolve())}
    if not mode["exact"]:
        fingerprint["mode"] = str(mode["name"])
    partial = PartialResults(output / "partial", fingerprint)

    # Rank 0 reads the annotations and any partial results, then tells every rank what to do;
    # an error there reaches every rank instead of leaving them waiting.
    plan: Any = None
    annotations: Any = None
    done: Dict[int, dict] = {}
    if dist.is_main:
        try:
            backend(evaluator)  # a missing optional evaluator fails before any image is run
            annotations, items = _prepare(layout, limit)
            output.mkdir(parents=True, exist_ok=True)
            if resume:
                done = partial.load()
            elif partial.folder.is_dir():
                warn(f"gnconvert: warning: discarding the partial results of an earlier run in {partial.folder} "
                     "(pass --resume to continue it instead)")
                partial.clear()
            todo = [(i, p) for i, p in items if i not in done]
            plan = {"items": [(i, str(p)) for i, p in items], "todo": [(i, str(p)) for i, p in todo]}
        except (GnconvertError, OSError) as e:
            dist.broadcast({"error": e})
            raise
    plan = dist.broadcast(plan)
    if "error" in plan:
        raise plan["error"]
    items = plan["items"]
    mine = dist.shard(plan["todo"])

    if mine and not hasattr(predictor, "predict_batch"):
        predictor = predictor()  # a loader: the model is built only once the data checks passed
    group_norm = None
    if hasattr(predictor, "network") and getattr(getattr(predictor, "arch", None), "norm", None) == "GN":
        from gnconvert.model.norm import group_norm_backend

        group_norm = group_norm_backend(predictor.device)
    records, loop_s, predict_s, startup_s = predict_loop(predictor, mine, dist, partial, batch_size, workers,
                                                         progress, warn)
    gathered: Any = dist.gather({"records": records, "loop_s": loop_s, "predict_s": predict_s, "startup_s": startup_s,
                            "n": len(mine)})
    if not dist.is_main:
        return None

    all_records = dict(done)
    for g in gathered:
        all_records.update(g["records"])
    wanted = [i for i, _ in items]
    skipped = [all_records[i] for i in wanted if "error" in all_records[i]]
    evaluated = [i for i in wanted if "error" not in all_records[i]]
    if not evaluated:
        raise GnconvertError(f"none of the {len(wanted)} images under {layout.images} could be decoded; "
                             "check the --images folder")

    results = {t: detectron_order(e for i in evaluated for e in all_records[i][t]) for t in IOU_TYPES}
    files = {"bbox": output / f"bbox_{layout.name}_results.json",
             "segm": output / f"segmentations_{layout.name}_results.json",
             "report": output / "report.json"}
    for t in IOU_TYPES:
        write_json_atomic(files[t], results[t])
    iou_types = [t for t in IOU_TYPES if results[t] or t == "bbox"]

    coco = CocoEvaluator(annotations, evaluator)
    evals = {t: coco.evaluate(results[t], t, evaluated) for t in iou_types}
    metrics: Dict[str, Any] = {t: evals[t]["metrics"] for t in iou_types}

    ref_report = None
    if reference:
        ref_results = {t: reference_mod.load_results_file(reference[t], evaluated) for t in reference}
        ref_report = {
            "files": {t: str(p) for t, p in reference.items()},
            "metrics": {t: coco.evaluate(ref_results[t], t, evaluated)["metrics"] for t in ref_results},
            "comparison": reference_mod.compare(results["bbox"], ref_results.get("bbox", []), evaluated),
        }

    slowest = max(g["loop_s"] for g in gathered)
    n_new = sum(g["n"] for g in gathered)
    report: Dict[str, Any] = {
        "source": str(source), "dataset": layout.name, "annotations": str(layout.annotations),
        "images": str(layout.images), "limit": limit, "world_size": dist.world_size,
        "images_evaluated": len(evaluated), "images_skipped": len(skipped),
        "skipped": [{"image_id": r["image_id"], "path": r["path"], "error": r["error"]} for r in skipped],
        "evaluator": evaluator, "tolerance": tolerance, "metrics": metrics, "group_norm": group_norm, "mode": mode,
        "coco_summary": {t: evals[t]["summary"] for t in iou_types},
        "verdict": verdicts(metrics, published, tolerance, missing=len(skipped) if limit is None else 0),
        "reference": ref_report,
        "timing": {"predicted_images": n_new, "resumed_images": len(done), "loop_seconds": slowest,
                   "predict_seconds": sum(g["predict_s"] for g in gathered),
                   "worker_startup_seconds": max(g["startup_s"] for g in gathered),
                   "images_per_second": (n_new / slowest) if slowest > 0 else float("nan")},
        "files": {k: str(v) for k, v in files.items()},
    }
    write_report(files["report"], report)
    partial.clear()
    echo(format_report(report))
    if report["verdict"] and report["verdict"]["overall"] == "INCOMPLETE":
        raise ParityError(f"verify INCOMPLETE for {source}: {len(skipped)} of {len(wanted)} images could not be "
                          f"read (first: {skipped[0]['path']}), so the AP is not minival's; fix the image folder, "
                          f"or pass --limit to evaluate a subset on purpose; see {files['report']}")
    if report["verdict"] and report["verdict"]["overall"] == "FAIL":
        bad = [f"{IOU_TYPES[t]} {metrics[t]['AP']:.2f} vs published {v['published']}"
               for t, v in report["verdict"].items() if t != "overall" and v["verdict"] == "FAIL"]
        raise ParityError(f"verify FAILED for {source}: {'; '.join(bad)} (tolerance {tolerance}); "
                          f"see {files['report']}")
    return report
