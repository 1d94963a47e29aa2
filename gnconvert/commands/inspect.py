"""`gnconvert inspect SOURCE`: what a checkpoint is, and what converting it keeps and drops."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Dict, List, Tuple

import click

from gnconvert.architecture.record import Kind
from gnconvert.commands.options import config_option, opts_option

_MOMENTUM = "optimizer momentum"


def _drop_kind(reason: str) -> str:
    """Per-blob reasons like 'optimizer momentum of conv1_w' grouped by their kind."""
    return _MOMENTUM if reason.startswith(_MOMENTUM) else reason


def summarize(ckpt, source: str, converted: bool) -> Dict[str, Any]:
    """Everything `inspect` shows, as plain data (the --json output)."""
    from gnconvert.checkpoint.name_mapping import describe

    arch, test = ckpt.arch, ckpt.arch.test
    dropped_by_kind = Counter(_drop_kind(r) for r in ckpt.dropped.values())
    return {
        "input": source,
        "input_format": "gnconvert-converted" if converted else ckpt.provenance.get("source_format"),
        "source": ckpt.provenance.get("source_file") or os.path.basename(ckpt.provenance.get("source_path") or ""),
        "model_id": ckpt.provenance.get("model_id"),
        "source_md5": ckpt.provenance.get("source_md5"),
        "pickle_layout": ckpt.provenance.get("pickle_layout"),
        "gnconvert_version": ckpt.provenance.get("gnconvert_version"),
        "architecture": describe(arch),
        "architecture_from": ckpt.provenance.get("architecture_from"),
        "has_cfg": ckpt.cfg_text is not None,
        "blobs": {
            "total": len(ckpt.state_dict) + len(ckpt.dropped),
            "mapped_to_parameters": len(ckpt.state_dict),
            "dropped": dict(dropped_by_kind),
        },
        "parameter_tensors": len(ckpt.state_dict),
        "parameter_count": ckpt.num_parameters,
        "dropped": {name: reason for name, reason in ckpt.dropped.items() if _drop_kind(reason) != _MOMENTUM},
        "settings": {
            "depth": arch.depth, "norm": arch.norm, "gn_groups": arch.gn_groups, "gn_eps": arch.gn_eps,
            "stride_in_1x1": arch.stride_in_1x1, "fpn_dim": arch.fpn_dim,
            "rpn_levels": [arch.rpn_min_level, arch.rpn_max_level], "box_head": arch.box_head,
            "mask_head": arch.mask_head, "mask_resolution": arch.mask_resolution,
            "num_classes": arch.num_classes, "pixel_means": list(arch.pixel_means),
            "bbox_reg_weights": list(arch.bbox_reg_weights), "test": dict(vars(test)),
        },
        "architecture_record": arch.to_dict(),
        "group_norm": _group_norm_here(arch),
    }


def _group_norm_here(arch) -> str:
    """Which GroupNorm this machine would run the model with (CUDA if present)."""
    if not arch.uses_group_norm:
        return "none (a frozen-BN model)"
    import torch

    from gnconvert.kernels.group_norm import choose_backend

    return str(choose_backend("cuda" if torch.cuda.is_available() else "cpu"))


def _lines(s: Dict[str, Any]) -> List[Tuple[str, str]]:
    st, t = s["settings"], s["settings"]["test"]
    model = f"model {s['model_id']}, " if s["model_id"] else ""
    if s["input_format"] == "gnconvert-converted":
        origin = f"converted by gnconvert {s['gnconvert_version']} from {model}{s['source']}"
    else:
        origin = f"Detectron pickle ({s['pickle_layout']} layout), {model}{s['source']}"
    norm = st["norm"] + (f" ({st['gn_groups']} groups, eps {st['gn_eps']:g})" if st["norm"] == "GN" else "")
    lines = [
        ("input", s["input"]),
        ("format", origin + (f", md5 {s['source_md5']}" if s["source_md5"] else "")),
        ("architecture", f"{s['architecture']}  [{s['architecture_from']}]"),
        ("blobs", f"{s['blobs']['total']}: {s['blobs']['mapped_to_parameters']} mapped to parameters"
                  + "".join(f", {n} dropped ({k})" for k, n in sorted(s["blobs"]["dropped"].items()))),
        ("parameters", f"{s['parameter_count']:,} in {s['parameter_tensors']} tensors"),
        ("body", f"R-{st['depth']}, {norm}, stride in {'1x1' if st['stride_in_1x1'] else '3x3'}"),
    ]
    if s["architecture_record"]["kind"] == Kind.CLASSIFIER:
        lines.append(("classes", f"{st['num_classes']} ImageNet classes (fc `pred`)"))
    else:
        lines += [
            ("heads", f"FPN dim {st['fpn_dim']} P{st['rpn_levels'][0]}-P{st['rpn_levels'][1]}, "
                      f"box {st['box_head']}, mask {st['mask_head']} at {st['mask_resolution']}px, "
                      f"{st['num_classes']} classes"),
            ("pixels", f"PIXEL_MEANS (BGR) {st['pixel_means']}, BBOX_REG_WEIGHTS {st['bbox_reg_weights']}"),
            ("test", f"SCALE {t['scale']} MAX_SIZE {t['max_size']} NMS {t['nms']} "
                     f"SCORE_THRESH {t['score_thresh']} DETECTIONS_PER_IM {t['detections_per_im']} "
                     f"RPN_PRE/POST_NMS_TOP_N {t['rpn_pre_nms_top_n']}/{t['rpn_post_nms_top_n']} "
                     f"RPN_NMS_THRESH {t['rpn_nms_thresh']}"),
        ]
    lines.append(("cfg", "embedded Detectron cfg kept" if s["has_cfg"] else "no Detectron cfg"))
    lines.append(("group norm", s["group_norm"]))
    lines += [("dropped", f"{name}: {reason}") for name, reason in sorted(s["dropped"].items())]
    return lines


@click.command("inspect")
@click.argument("source")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON for machines.")
@opts_option
def command(source: str, config_path, as_json: bool, opts) -> None:
    """Describe SOURCE: a model id, a Detectron .pkl, or a converted .safetensors.

    Shows the architecture and how it was found, blob counts by kind, the blobs
    conversion drops and why, the parameter count and the cfg's test settings.
    Nothing in the file is executed.
    """
    from gnconvert.checkpoint.converted import is_converted_file
    from gnconvert.checkpoint.sources import load_source

    summary = summarize(load_source(source, config_path=config_path, opts=list(opts)), source,
                        is_converted_file(source))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        lines = _lines(summary)
        width = max(len(k) for k, _ in lines)
        for key, value in lines:
            click.echo(f"{key.ljust(width)}  {value}")
