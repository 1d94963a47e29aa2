"""gnconvert predict: detections for images, as COCO results JSON and annotated PNGs.

The output folder is ours or it is refused (`results.run_folder`, exclusive): results are
saved per image as they come, and the final files (`results_bbox.json`, `results_segm.json`,
`images.json`) are written when the run ends.  A rerun with --resume continues after the
images already done; a rerun without it replaces our earlier files as a set.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import click

from gnconvert.commands.options import default_output, opts_option, resolve_runtime, runtime_options
from gnconvert.errors import GnconvertError, Interrupted, UsageError
from gnconvert.results.run_folder import RunFolder
from gnconvert.zoo.cache import file_digest

RESULT_FILES = ("results_bbox.json", "results_segm.json", "images.json")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")


def expand_inputs(inputs) -> List[str]:
    """Files as given, folders' images (sorted), and glob patterns (sorted); missing ones are errors."""
    out: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise UsageError(f"no file matches {item}")
            out += found
        else:
            raise UsageError(f"image {item} does not exist; pass image files, folders or glob patterns")
    return out


@click.command("predict")
@click.argument("source")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False),
              help="Folder for results_bbox.json, results_segm.json, images.json and one PNG per image "
                   "(default ./predict-SOURCE).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same folder.")
@click.option("--json", "json_target", type=click.Choice(["-"]), default=None,
              help="'-': print one JSON document (images, bbox, segm) to stdout instead of writing result files.")
@click.option("--min-score", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Keep only detections scoring at least this (Detectron's own results keep all, from 0.05).")
@click.option("--draw-thresh", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Draw detections scoring at least this.")
@click.option("--no-masks", is_flag=True, help="Skip the mask head.")
@click.option("--no-draw", is_flag=True, help="Write JSON only.")
@runtime_options
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Detectron YAML config for a .pkl that embeds none.")
@opts_option
def command(source, inputs, outdir, resume, json_target, min_score, draw_thresh, no_masks, no_draw, device,
            precision, compile_, allow_slow, config_path, opts):
    """Run SOURCE (model id, Detectron .pkl or converted .safetensors) on INPUTS: image files,
    folders of images, or glob patterns ('photos/**/*.jpg').

    JSON follows Detectron's results format: bbox [x, y, w, h] with Detectron's "+1" width,
    COCO category ids, RLE masks with counts as str; image_id is the image's position (1-based),
    and images.json maps ids to file names and SHA-256 digests.  Unreadable images are skipped
    with a warning (the exit status is then 1); Ctrl-C keeps what is done for --resume.
    """
    from gnconvert.api import load
    from gnconvert.inference.detector import Detector

    runtime = resolve_runtime(device, precision, compile_, allow_slow)  # before any file is looked at
    images = expand_inputs(inputs)
    to_stdout = json_target == "-"
    if resume and to_stdout and outdir is None:
        raise UsageError("--resume needs the -o folder of the run to continue")
    out = Path(outdir) if outdir else (None if to_stdout else default_output("predict", source))
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; pass a folder with -o")

    model = load(source, config=config_path, opts=list(opts), runtime=runtime)
    if not isinstance(model, Detector):
        raise UsageError(f"{source} is an ImageNet classifier backbone, not a detector; predict needs a Mask R-CNN "
                         "model (use gnconvert.load(...).predict in Python for its top-5 classes)")
    fingerprint = {"source": os.path.basename(os.fspath(source)), "provenance": model.provenance.get("source_md5"),
                   "masks": not no_masks, "min_score": min_score, "test": [list(o) for o in opts]}
    mode = model.mode
    if not mode.exact:  # a run's results all come from one mode; --resume checks it
        fingerprint["mode"] = mode.name
        click.echo(f"gnconvert: running in {mode.describe()}", err=True)
    folder = None
    earlier: dict = {}
    try:
        if out is not None:
            folder = RunFolder(out, "predict", fingerprint, exclusive=True, final_files=RESULT_FILES)
            earlier = folder.claim(resume, warn=lambda message: click.echo(message, err=True))
        failed = _run(model, images, folder, earlier, to_stdout, min_score, draw_thresh, no_masks,
                      no_draw or folder is None)
    except BaseException as e:
        if folder is not None:
            folder.discard_if_empty()  # keeps the folder once an image is finished
        if not isinstance(e, KeyboardInterrupt):
            raise
        finished = len(folder.partial.load()) if folder else 0
        hint = (f"rerun the same command with --resume to continue in {folder.folder}" if finished
                else "nothing was finished")
        raise Interrupted(f"interrupted after {finished} of {len(images)} images; {hint}") from None
    if failed:
        raise GnconvertError(f"{len(failed)} of {len(images)} images could not be read (first: {failed[0]}); "
                             "the others' results are written")


def _run(model, images, folder: Optional[RunFolder], earlier: dict, to_stdout, min_score, draw_thresh, no_masks,
         no_draw):
    import cv2
    from tqdm import tqdm

    from gnconvert.atomic import write_bytes_atomic, write_json_atomic
    from gnconvert.inference.preprocess import load_image
    from gnconvert.results.coco_results import detectron_order, to_results
    from gnconvert.results.draw import draw_detections

    done = {(r["image"]["file_name"], r["image"]["sha256"]): r for r in earlier.values()}
    fast_mode = None if model.mode.exact else model.mode.name
    records, failed, written = [], [], []
    bar = tqdm(images, unit="im", disable=len(images) < 2 or not sys.stderr.isatty(), file=sys.stderr)
    for image_id, path in enumerate(bar, start=1):
        name = os.path.basename(path)
        digest = file_digest(path, "sha256")
        png = f"{image_id:04d}_{Path(path).stem}.png"
        if (name, digest) in done:
            record = dict(done[(name, digest)], image_id=image_id)
            record["image"] = dict(record["image"], id=image_id)
            records.append(record)
            if not no_draw:
                written.append(png)
            continue
        try:
            im = load_image(path)
        except GnconvertError as e:
            failed.append(path)
            tqdm.write(f"gnconvert: warning: skipping {path}: {e}", file=sys.stderr)
            continue
        dets = model.predict(im, masks=not no_masks)
        if min_score > 0:
            dets = dets.select(dets.scores >= min_score)
        bbox, segm = to_results(image_id, dets)
        record = {"image_id": image_id, "bbox": bbox, "segm": segm,
                  "image": {"id": image_id, "file_name": name, "sha256": digest, "height": im.shape[0],
                            "width": im.shape[1]}}
        if fast_mode:
            record["image"]["mode"] = fast_mode  # how these detections were computed
        if folder is not None and not no_draw:
            ok, encoded = cv2.imencode(".png", draw_detections(im, dets, score_thresh=draw_thresh))
            write_bytes_atomic(folder.folder / png, encoded.tobytes())
            written.append(png)
        if folder is not None:
            folder.append([record])
        records.append(record)
        shown = int((dets.scores >= draw_thresh).sum())
        tqdm.write(f"{path}: {len(dets)} detections ({shown} >= {draw_thresh}); "
                   + ", ".join(f"{k} {v:.2f}s" for k, v in dets.timings.items()), file=sys.stderr)

    if failed and not records:
        raise GnconvertError(f"none of the {len(images)} images could be read (first: {failed[0]}); "
                             "pass JPEG or PNG files")
    records.sort(key=lambda r: r["image_id"])
    bbox = detectron_order(e for r in records for e in r["bbox"])
    segm = detectron_order(e for r in records for e in r["segm"])
    image_list = [r["image"] for r in records]
    if to_stdout:
        click.echo(json.dumps({"images": image_list, "bbox": bbox, "segm": [] if no_masks else segm}))
    if folder is not None:
        finals = {"results_bbox.json": bbox, "images.json": image_list}
        if not no_masks:
            finals["results_segm.json"] = segm
        if not to_stdout:
            for file_name, content in finals.items():
                write_json_atomic(folder.folder / file_name, content, indent=1 if file_name == "images.json" else None)
            written += list(finals)
        folder.finish(written)
        if not to_stdout:
            click.echo(str(folder.folder))
    return failed
