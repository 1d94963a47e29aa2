"""`gnconvert verify SOURCE`: COCO box and mask AP, checked against the published numbers."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from gnconvert.architecture.record import Kind
from gnconvert.commands.options import default_output, opts_option, resolve_runtime, runtime_options
from gnconvert.errors import UsageError


def _catalog_entry(source: str):
    """The catalog entry when SOURCE is a model id; None for a path."""
    from gnconvert.zoo import catalog

    if Path(source).exists() or source not in catalog.load_catalog():
        return None
    entry = catalog.get(source)
    if entry.kind != Kind.MASK_RCNN:
        raise UsageError(f"model {entry.id} ({entry.title}) is an ImageNet classifier; "
                         "verify evaluates Mask R-CNN models on COCO")
    return entry


@click.command("verify")
@click.argument("source")
@click.option("--coco-root", type=click.Path(path_type=Path),
              help="Folder holding annotations/instances_minival2014.json + val2014/ "
                   "(or annotations/instances_val2017.json + val2017/).")
@click.option("--annotations", type=click.Path(path_type=Path), help="The instances_*.json file itself.")
@click.option("--images", type=click.Path(path_type=Path), help="The image folder itself.")
@click.option("--limit", type=int, help="Evaluate only the first N images (by image id).")
@runtime_options
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Image-decoding DataLoader workers.")
@click.option("--output", type=click.Path(path_type=Path),
              help="Where results, report and partial results go (default ./verify-SOURCE).")
@click.option("--tolerance", type=float, default=0.1, show_default=True,
              help="Largest |measured - published| AP that still passes.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its partial results.")
@click.option("--reference-results", is_flag=True,
              help="Also evaluate Detectron's own published detections and compare image by image.")
@click.option("--evaluator", type=click.Choice(["pycocotools", "faster-coco-eval"]), default="pycocotools",
              show_default=True)
@click.option("--expect-box-ap", type=float, help="Box AP to check against instead of the catalog's.")
@click.option("--expect-mask-ap", type=float, help="Mask AP to check against instead of the catalog's.")
@click.option("--progress/--no-progress", default=None, help="A progress bar (default: when stderr is a terminal).")
@click.option("--backend", type=click.Choice(["gnconvert", "torchvision"]), default="gnconvert", show_default=True,
              help="gnconvert: our Detector (Detectron's exact test path); torchvision: torchvision's MaskRCNN "
                   "with the converted weights (gnconvert export --to torchvision), to measure what it costs.")
@opts_option
def command(source: str, coco_root: Optional[Path], annotations: Optional[Path], images: Optional[Path],
            limit: Optional[int], device: str, precision: str, compile_: bool, allow_slow: bool, batch_size: int,
            workers: int, output: Optional[Path], tolerance: float, resume: bool, reference_results: bool,
            evaluator: str, expect_box_ap: Optional[float], expect_mask_ap: Optional[float],
            progress: Optional[bool], backend: str, opts) -> None:
    """Evaluate SOURCE (a model id from `gnconvert list`, or a checkpoint path) on COCO minival.

    Prints published vs measured box and mask AP with PASS/FAIL within --tolerance and
    exits non-zero on FAIL; writes Detectron-format results JSON and report.json.
    Many GPUs: torchrun --nproc_per_node K -m gnconvert verify ...
    """
    import dataclasses

    import torch

    from gnconvert.evaluation import VerifyConfig, find_layout, run_verify
    from gnconvert.evaluation.distributed import device_for_rank, init_from_env
    from gnconvert.export.torchvision_adapter import backend_mode, predictor_for

    runtime = resolve_runtime(device, precision, compile_, allow_slow)  # before any data is read
    mode_record = backend_mode(runtime.mode.to_dict(), backend)  # a fast mode with --backend torchvision fails here
    if tolerance < 0:
        raise UsageError(f"--tolerance {tolerance} must be >= 0")
    layout = find_layout(coco_root=coco_root, annotations=annotations, images=images)
    entry = _catalog_entry(source)
    published = dict(entry.published) if entry else {}
    if expect_box_ap is not None:
        published["box_ap"] = expect_box_ap
    if expect_mask_ap is not None:
        published["mask_ap"] = expect_mask_ap
    dist = init_from_env(str(runtime.device))
    try:
        reference = None
        if reference_results:
            if entry is None:
                raise UsageError(f"--reference-results needs a catalog model id, and {source} is not one")
            if dist.is_main:
                from gnconvert.zoo import download

                reference = {"bbox": download.fetch(entry.id, "boxes")["boxes"],
                             "segm": download.fetch(entry.id, "masks")["masks"]}
        rank_runtime = dataclasses.replace(runtime, device=torch.device(device_for_rank(str(runtime.device), dist)))
        config = VerifyConfig(layout, output or default_output("verify", source), source=source, published=published or None,
                              tolerance=tolerance, limit=limit, batch_size=batch_size, workers=workers, resume=resume,
                              evaluator=evaluator, reference=reference, mode=mode_record,
                              progress=sys.stderr.isatty() if progress is None else progress)

        def load_model():  # built only once the data checks have passed: bad input fails in seconds
            from gnconvert import api

            return predictor_for(api.load(source, opts=list(opts), runtime=rank_runtime), backend)

        run_verify(load_model, config, dist=dist, echo=click.echo)
    finally:
        dist.close()
