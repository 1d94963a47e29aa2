"""`gnconvert verify` in four steps: plan (annotations, what is left to run), predict (every image,
saved as we go), evaluate (results files, COCOeval), report (written, printed, judged).

Per-image results are appended to the run folder's partial records after every batch, so a
run killed at any point resumes (`resume=True`) from the images it had finished.  The final
results files are written in Detectron's format and order, so one process, many processes
and a resumed run give byte-identical files.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

from gnconvert.atomic import write_json_atomic
from gnconvert.errors import GnconvertError, ParityError, UsageError
from gnconvert.evaluation import reference as reference_mod
from gnconvert.evaluation.coco_eval import CocoEvaluator, backend, load_annotations
from gnconvert.evaluation.coco_layout import CocoLayout
from gnconvert.evaluation.dataset import image_loader
from gnconvert.evaluation.distributed import Workers
from gnconvert.evaluation.report import IOU_TYPES, format_report, verdicts, write_report
from gnconvert.results.coco_results import detectron_order, to_results
from gnconvert.results.run_folder import RunFolder
from gnconvert.runtime.mode import EXACT


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


def predict_loop(predictor, todo, workers: Workers, store: RunFolder, batch_size: int, num_workers: int,
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
            store.append(new, workers.rank)
            for r in new:
                records[r["image_id"]] = r
            bar.update(len(batch))
    finally:
        bar.close()
        store.partial.close()
    end = time.perf_counter()
    start = end if start is None else start
    return records, end - start, predict_s, start - begin


@dataclass(frozen=True)
class VerifyConfig:
    """What a verify run evaluates and how: everything but the model and the processes.

    `published` is the catalog's {'box_ap', 'mask_ap'}: with it each AP gets PASS/FAIL within
    `tolerance`, and a FAIL raises ParityError after the report is written.  `reference` is
    {'bbox': path, 'segm': path} of Detectron's own results files.  `mode` is the run mode's
    `to_dict()` (default: the exact one): a run's results all come from one mode."""

    layout: CocoLayout
    output: Path
    source: str
    published: Optional[dict] = None
    tolerance: float = 0.1
    limit: Optional[int] = None
    batch_size: int = 1
    workers: int = 2
    resume: bool = False
    evaluator: str = "pycocotools"
    reference: Optional[Dict[str, Path]] = None
    progress: bool = True
    mode: Dict[str, Any] = field(default_factory=lambda: dict(EXACT.to_dict()))

    def check(self) -> None:
        backend(self.evaluator)  # an unknown or missing optional evaluator fails before any image is run
        if self.batch_size < 1 or self.workers < 0:
            raise UsageError("--batch-size must be >= 1 and --workers >= 0")

    def folder(self) -> RunFolder:
        fingerprint = {"source": str(self.source), "annotations": str(Path(self.layout.annotations).resolve())}
        if not self.mode["exact"]:
            fingerprint["mode"] = str(self.mode["name"])
        return RunFolder(Path(self.output), "verify", fingerprint, exclusive=False)


@dataclass
class Plan:
    """What rank 0 read and every rank was told: the images, those still to run, earlier records."""

    annotations: Any
    items: List[Tuple[int, str]]
    todo: List[Tuple[int, str]]
    done: Dict[int, dict]


def plan(config: VerifyConfig, store: RunFolder, dist: Workers, warn: Callable[[str], None]) -> Plan:
    """Rank 0 reads the annotations and any partial results, then tells every rank what to do; an
    error there reaches every rank instead of leaving them waiting."""
    message: Any = None
    annotations: Any = None
    done: Dict[int, dict] = {}
    if dist.is_main:
        try:
            config.check()
            annotations, items = _prepare(config.layout, config.limit)
            done = store.claim(config.resume, warn)
            message = {"items": [(i, str(p)) for i, p in items],
                       "todo": [(i, str(p)) for i, p in items if i not in done]}
        except (GnconvertError, OSError) as e:
            dist.broadcast({"error": e})
            raise
    message = dist.broadcast(message)
    if "error" in message:
        raise message["error"]
    return Plan(annotations, message["items"], message["todo"], done)


def evaluate(config: VerifyConfig, the_plan: Plan, records: Dict[int, dict]) -> Dict[str, Any]:
    """Results files in Detectron's format and order, COCOeval's metrics, and Detectron's own results'."""
    wanted = [i for i, _ in the_plan.items]
    skipped = [records[i] for i in wanted if "error" in records[i]]
    evaluated = [i for i in wanted if "error" not in records[i]]
    if not evaluated:
        raise GnconvertError(f"none of the {len(wanted)} images under {config.layout.images} could be decoded; "
                             "check the --images folder")
    results = {t: detectron_order(e for i in evaluated for e in records[i][t]) for t in IOU_TYPES}
    output, name = Path(config.output), config.layout.name
    files = {"bbox": output / f"bbox_{name}_results.json", "segm": output / f"segmentations_{name}_results.json",
             "report": output / "report.json"}
    for t in IOU_TYPES:
        write_json_atomic(files[t], results[t])
    iou_types = [t for t in IOU_TYPES if results[t] or t == "bbox"]
    coco = CocoEvaluator(the_plan.annotations, config.evaluator)
    evals = {t: coco.evaluate(results[t], t, evaluated) for t in iou_types}
    ref_report = None
    if config.reference:
        ref_results = {t: reference_mod.load_results_file(config.reference[t], evaluated) for t in config.reference}
        ref_report = {
            "files": {t: str(p) for t, p in config.reference.items()},
            "metrics": {t: coco.evaluate(ref_results[t], t, evaluated)["metrics"] for t in ref_results},
            "comparison": reference_mod.compare(results["bbox"], ref_results.get("bbox", []), evaluated),
        }
    return {"wanted": wanted, "skipped": skipped, "evaluated": evaluated, "files": files, "evals": evals,
            "reference": ref_report}


def report(config: VerifyConfig, the_plan: Plan, scored: Dict[str, Any], gathered: List[dict], dist: Workers,
           group_norm: Optional[str], echo: Callable[[str], None]) -> dict:
    """The report: written and printed."""
    evals, skipped, files = scored["evals"], scored["skipped"], scored["files"]
    metrics: Dict[str, Any] = {t: e["metrics"] for t, e in evals.items()}
    slowest = max(g["loop_s"] for g in gathered)
    n_new = sum(g["n"] for g in gathered)
    out: Dict[str, Any] = {
        "source": str(config.source), "dataset": config.layout.name, "annotations": str(config.layout.annotations),
        "images": str(config.layout.images), "limit": config.limit, "world_size": dist.world_size,
        "images_evaluated": len(scored["evaluated"]), "images_skipped": len(skipped),
        "skipped": [{"image_id": r["image_id"], "path": r["path"], "error": r["error"]} for r in skipped],
        "evaluator": config.evaluator, "tolerance": config.tolerance, "metrics": metrics, "group_norm": group_norm,
        "mode": config.mode, "coco_summary": {t: e["summary"] for t, e in evals.items()},
        "verdict": verdicts(metrics, config.published, config.tolerance,
                            missing=len(skipped) if config.limit is None else 0),
        "reference": scored["reference"],
        "timing": {"predicted_images": n_new, "resumed_images": len(the_plan.done), "loop_seconds": slowest,
                   "predict_seconds": sum(g["predict_s"] for g in gathered),
                   "worker_startup_seconds": max(g["startup_s"] for g in gathered),
                   "images_per_second": (n_new / slowest) if slowest > 0 else float("nan")},
        "files": {k: str(v) for k, v in files.items()},
    }
    write_report(files["report"], out)
    echo(format_report(out))
    return out


def judge(config: VerifyConfig, out: dict) -> None:
    """ParityError on FAIL (an AP off the published one) or INCOMPLETE (images missing)."""
    verdict = (out["verdict"] or {}).get("overall")
    skipped, where = out["skipped"], out["files"]["report"]
    if verdict == "INCOMPLETE":
        raise ParityError(f"verify INCOMPLETE for {config.source}: {len(skipped)} of "
                          f"{len(skipped) + out['images_evaluated']} images could not be read (first: "
                          f"{skipped[0]['path']}), so the AP is not minival's; fix the image folder, or pass --limit "
                          f"to evaluate a subset on purpose; see {where}")
    if verdict == "FAIL":
        bad = [f"{IOU_TYPES[t]} {out['metrics'][t]['AP']:.2f} vs published {v['published']}"
               for t, v in out["verdict"].items() if t not in ("overall", "missing") and v["verdict"] == "FAIL"]
        raise ParityError(f"verify FAILED for {config.source}: {'; '.join(bad)} (tolerance {config.tolerance}); "
                          f"see {where}")


def run_verify(predictor, config: VerifyConfig, dist: Optional[Workers] = None, echo: Callable[[str], None] = print,
               warn: Callable[[str], None] = _stderr) -> Optional[dict]:
    """Verify `predictor` on `config`'s COCO data: plan, predict, evaluate, report.  Returns the report
    (None on ranks > 0).  `predictor` has `predict_batch(list of BGR arrays) -> list of Detections`, or
    is a zero-argument callable returning one (called only if there are images to run)."""
    dist = dist or Workers()
    store = config.folder()
    the_plan = plan(config, store, dist, warn)
    mine = dist.shard(the_plan.todo)
    if mine and not hasattr(predictor, "predict_batch"):
        predictor = predictor()  # a loader: the model is built only once the data checks passed
    records, loop_s, predict_s, startup_s = predict_loop(predictor, mine, dist, store, config.batch_size,
                                                         config.workers, config.progress, warn)
    gathered: Any = dist.gather({"records": records, "loop_s": loop_s, "predict_s": predict_s,
                                 "startup_s": startup_s, "n": len(mine)})
    if not dist.is_main:
        return None
    all_records = dict(the_plan.done)
    for g in gathered:
        all_records.update(g["records"])
    scored = evaluate(config, the_plan, all_records)
    out = report(config, the_plan, scored, gathered, dist, getattr(predictor, "group_norm", None), echo)
    store.finish()
    judge(config, out)
    return out
