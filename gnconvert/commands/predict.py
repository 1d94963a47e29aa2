"""gnconvert predict: detections for images, as COCO results JSON and annotated PNGs."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UsageError


@click.command("predict")
@click.argument("source")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="folder for results_bbox.json, results_segm.json, images.json and one PNG per image")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Detectron YAML config for a .pkl that embeds none")
@click.option("--draw-thresh", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="only detections scoring at least this are drawn (all are written to JSON)")
@click.option("--no-masks", is_flag=True, help="skip the mask head")
@click.option("--no-draw", is_flag=True, help="write JSON only")
def command(source, images, outdir, device, config_path, draw_thresh, no_masks, no_draw):
    """Run SOURCE (model id, Detectron .pkl or converted .safetensors) on IMAGES.

    JSON follows Detectron's results format: bbox [x, y, w, h] with Detectron's "+1" width,
    COCO category ids, RLE masks with counts as str; image_id is the image's position (1-based),
    and images.json maps ids to files.
    """
    import cv2
    from tqdm import tqdm

    from ..api import load
    from ..atomic import write_bytes_atomic, write_json_atomic
    from ..evaluation.results_format import detectron_order, to_results
    from ..inference.preprocess import load_image
    from ..visualize import draw_detections

    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"image {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror}; choose a writable --output") from e
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out} is not writable; choose a writable --output")

    model = load(source, device=device, config=config_path)
    if not hasattr(model, "predict"):
        raise UsageError(f"{source} is an ImageNet classifier backbone, not a detector; predict needs a Mask R-CNN model")
    bbox, segm, image_list = [], [], []
    for image_id, path in enumerate(tqdm(images, unit="im", disable=len(images) < 2), start=1):
        im = load_image(path)
        dets = model.predict(im, masks=not no_masks)
        b, s = to_results(image_id, dets)
        bbox += b
        segm += s
        image_list.append({"id": image_id, "file_name": os.path.abspath(path), "height": im.shape[0], "width": im.shape[1]})
        if not no_draw:
            ok, png = cv2.imencode(".png", draw_detections(im, dets, score_thresh=draw_thresh))
            write_bytes_atomic(out / f"{image_id:04d}_{Path(path).stem}.png", png.tobytes())
        shown = int((dets.scores >= draw_thresh).sum())
        click.echo(f"{path}: {len(dets)} detections ({shown} >= {draw_thresh}); "
                   + ", ".join(f"{k} {v:.2f}s" for k, v in dets.timings.items()), err=True)
    write_json_atomic(out / "results_bbox.json", detectron_order(bbox))
    if not no_masks:
        write_json_atomic(out / "results_segm.json", detectron_order(segm))
    write_json_atomic(out / "images.json", image_list, indent=1)
    click.echo(str(out))
