"""The verdict (published vs measured AP within a tolerance) and the table `verify` prints."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from gnconvert.atomic import write_json_atomic
from gnconvert.evaluation.coco_eval import METRICS

IOU_TYPES = {"bbox": "box AP", "segm": "mask AP"}
PUBLISHED_KEYS = {"bbox": "box_ap", "segm": "mask_ap"}


def verdicts(measured: Dict[str, dict], published: Optional[dict], tolerance: float,
             missing: int = 0) -> Optional[dict]:
    """PASS/FAIL per AP within `tolerance`; INCOMPLETE overall when `missing` images of the set
    could not be evaluated (AP over part of minival is not the published AP)."""
    if not published:
        return {"overall": "INCOMPLETE", "missing": missing} if missing else None
    out: Dict[str, Any] = {}
    for t, key in PUBLISHED_KEYS.items():
        if published.get(key) is None or t not in measured:
            continue
        delta = measured[t]["AP"] - float(published[key])
        out[t] = {"published": float(published[key]), "delta": delta,
                  "verdict": "PASS" if abs(delta) <= tolerance + 1e-9 else "FAIL"}
    out["overall"] = "PASS" if all(v["verdict"] == "PASS" for k, v in out.items()) else "FAIL"
    if missing:
        out["overall"], out["missing"] = "INCOMPLETE", missing
    return out


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def format_report(report: dict) -> str:
    """The table `gnconvert verify` prints."""
    lines = [f"{report['source']} on {report['dataset']}: {report['images_evaluated']} images"
             f" ({report['images_skipped']} skipped), {report['evaluator']}",
             f"{'':8} {'published':>9} {'measured':>9} {'delta':>7}  {'verdict':<7}"
             + "".join(f"{m:>6}" for m in METRICS[1:])]
    verdict = report.get("verdict") or {}
    for t, label in IOU_TYPES.items():
        if t not in report["metrics"]:
            continue
        m = report["metrics"][t]
        v = verdict.get(t)
        published = _fmt(v["published"]) if v else "-"
        delta = f"{v['delta']:+.2f}" if v else "-"
        word = v["verdict"] if v else "n/a"
        lines.append(f"{label:8} {published:>9} {m['AP']:>9.2f} {delta:>7}  {word:<7}"
                     + "".join(f"{_fmt(m[k]):>6}" for k in METRICS[1:]))
    if verdict and verdict["overall"] == "INCOMPLETE":
        lines.append(f"verdict: INCOMPLETE: {verdict['missing']} of the dataset's images could not be evaluated, "
                     "so these APs are not the published ones")
    elif verdict:
        lines.append(f"verdict: {verdict['overall']} (tolerance {report['tolerance']} AP)")
    else:
        lines.append("verdict: none (no published AP for this source in the catalog)")
    ref = report.get("reference")
    if ref:
        c = ref["comparison"]
        lines.append("Detectron's own detections on these images: "
                     + ", ".join(f"{IOU_TYPES[t]} {ref['metrics'][t]['AP']:.2f}" for t in ref["metrics"]))
        b, s = c["box_max_abs_diff_px"], c["score_abs_diff"]
        if not c["detectron_detections"]:
            lines.append("Detectron's published detections hold none for these images: nothing to compare")
        else:
            lines.append(f"matched {c['matched']}/{c['detectron_detections']} of Detectron's detections "
                         f"({100 * c['matched_share']:.2f}%, same class, IoU >= {c['iou_threshold']}); "
                         f"{c['ours_unmatched']} of ours unmatched")
            lines.append(f"box |diff| px: median {b['median']:.3g}, p99 {b['p99']:.3g}, max {b['max']:.3g}; "
                         f"score |diff|: median {s['median']:.3g}, p99 {s['p99']:.3g}, max {s['max']:.3g}")
    if report.get("group_norm"):
        lines.append(f"GroupNorm: {report['group_norm']}")
    mode = report.get("mode")
    if mode and mode.get("backend"):
        lines.append(f"backend: {mode['name']}: not Detectron's exact test path; these APs measure what it costs")
    elif mode and not mode["exact"]:
        lines.append(f"mode: {mode['name']}: a fast mode, not Detectron's exact numerics; these APs measure this "
                     "mode, the exact conversion is verified without --precision/--compile")
    lines.append(f"{report['timing']['images_per_second']:.2f} images/s; report: {report['files']['report']}")
    return "\n".join(lines)


def _json_safe(obj):
    """NaN (an AP with no ground truth in its range) as null: standard JSON for any reader."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(path, report: dict) -> None:
    write_json_atomic(path, _json_safe(report))
