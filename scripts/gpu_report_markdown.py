"""The GPU report's tables: OUT/<date>-<gpu>.md from the report's JSON (scripts/gpu_report.py)."""
from __future__ import annotations


def _f(x, fmt=".3f") -> str:
    return "—" if x is None or x != x else format(x, fmt)


def markdown(report: dict) -> str:
    steps = report["steps"]
    lines = [f"# GPU report {report['date']}" + (" (DRY RUN: CPU, tiny inputs, figures meaningless)"
                                                 if report["dry_run"] else ""),
             "", f"commit `{report['commit']}`, {report.get('total_seconds')} s in all "
             f"(CUDA time boxes sum to {sum(report.get('planned_s', {}).values())} of {report.get('budget_s')} s)", "",
             "| step | status | seconds | box (CUDA) |", "| --- | --- | --- | --- |"]
    planned = report.get("planned_s", {})
    lines += [f"| {name} | {s['status']} | {s['seconds']} | {planned.get(name, '—')} |" for name, s in steps.items()]
    env = steps.get("env", {}).get("result")
    if env:
        lines += ["", "## Environment", "", "| | |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in env.items()]
    tests = steps.get("tests", {}).get("result")
    if tests:
        lines += ["", "## pytest -m gpu", "", f"`{tests['command']}`: {tests['counts']} (exit {tests['returncode']})"]
    gn = steps.get("groupnorm", {}).get("result")
    if gn:
        lines += ["", "## GroupNorm at every call site of R-50-FPN GN", "",
                  f"measured copy bandwidth {_f(gn['copy_bandwidth_gb_s'], '.0f')} GB/s", "",
                  "| dtype | batch | ours ms | F.group_norm ms | F.group_norm + add/relu ms | speedup | floor ms |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in gn["configs"]:
            t = c["totals"]
            lines.append(f"| {c['dtype']} | {c['batch']} | {_f(t['ours_ms'])} | {_f(t['group_norm_ms'])} | "
                         f"{_f(t['group_norm_ops_ms'])} | {_f(t['speedup_vs_group_norm_ops'], '.2f')}x | "
                         f"{_f(t['floor_ms'])} |")
        for c in gn["configs"]:
            lines += ["", f"### {c['dtype']}, batch {c['batch']} ({c['input']})", "",
                      "| site | shape | x | ours ms | GN+ops ms | speedup | GB/s | % of copy peak |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['site']} | {tuple(r['shape'])} | {r['count']} | {_f(r['ours_ms'], '.4f')} | "
                      f"{_f(r['group_norm_ops_ms'], '.4f')} | {_f(r['speedup'], '.2f')}x | {_f(r['gb_s'], '.0f')} | "
                      f"{_f(r['pct_of_copy_peak'], '.1f')} |" for r in c["sites"]]
    pred = steps.get("predict", {}).get("result")
    if pred:
        lines += ["", f"## predict, batch 1 ({pred['device']})", "",
                  "| image | s/image, Triton GN | s/image, PyTorch GN | speedup | detections |",
                  "| --- | --- | --- | --- | --- |"]
        for name, per in pred["images"].items():
            lines.append(f"| {name} | {_f(per['triton']['seconds'], '.4f')} | {_f(per['torch']['seconds'], '.4f')} | "
                         f"{_f(per['kernel_speedup'], '.2f')}x | {per['triton']['detections']} |")
        first = next(iter(pred["images"].values()), None)
        if first:
            lines += ["", "stages (Triton GN, first image, seconds): " +
                      ", ".join(f"{k} {v:.4f}" for k, v in first["triton"]["stages"].items())]
        lines += [f"predict_batch ({b['batch_size']} same-size images), GN {k}: {_f(b['images_per_s'], '.2f')} images/s"
                  for k, b in pred["batch"].items()]
    par = steps.get("parity", {}).get("result")
    if par:
        lines += ["", f"## Golden parity on {par['device']}", "", f"{par['counts']} (exit {par['returncode']})", "",
                  "| tag | image | verdict |", "| --- | --- | --- |"]
        lines += [f"| {c['tag']} | {c['image']} | {c['verdict']} |" for c in par["cases"]]
    ver = steps.get("verify", {}).get("result")
    if ver:
        lines += ["", f"## gnconvert verify ({ver['device']})", "",
                  f"{ver['images']} images: {_f(ver['images_per_s'], '.2f')} images/s, box AP {_f(ver['box_ap'], '.1f')}, "
                  f"mask AP {_f(ver['mask_ap'], '.1f')}"]
    for step in ("modes", "compile"):
        res = steps.get(step, {}).get("result")
        if not res:
            continue
        lines += ["", f"## Run modes: {step} ({res['device']})", "",
                  "| mode | first call s | s/image | vs fp32 | graphs | strict | loose | box AP | mask AP | FPN err |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in res.items():
            if name == "device":
                continue
            f = r["fidelity"]
            lines.append(f"| {name} | {_f(r['first_call_s'], '.1f')} | {_f(r['seconds'], '.4f')} | "
                         f"{_f(r.get('speedup_vs_fp32'), '.2f')} | {r['graphs']} | {100 * f['strict_share']:.1f}% | "
                         f"{100 * f['loose_share']:.1f}% | {_f(f['box_ap'], '.1f')} | {_f(f['mask_ap'], '.1f')} | "
                         f"{_f(f['fpn_rel_error'], '.1e')} |")
    exp = steps.get("export", {}).get("result")
    if exp:
        lines += ["", f"## AOTInductor package ({exp['device']})", "", "| | |", "| --- | --- |"]
        lines += [f"| {k} | {v if not isinstance(v, float) else _f(v, '.4f')} |" for k, v in exp.items() if k != "device"]
    failed = {n: s for n, s in steps.items() if s["status"] != "ok"}
    for name, s in failed.items():
        lines += ["", f"## {name}: {s['status']}", "", "```", s.get("log_tail", "")[-1500:], "```"]
    return "\n".join(lines) + "\n"


