"""`gnconvert export SOURCE --to export|aoti|torchscript|onnx|safetensors|detectron|timm|torchvision -o OUT`."""
from __future__ import annotations

import click

from gnconvert.commands.options import opts_option
from gnconvert.export import TARGETS


@click.command("export")
@click.argument("source")
@click.option("--to", "target", required=True, type=click.Choice(TARGETS),
              help="Artifact kind: export (whole pipeline, torch.export .pt2), aoti (that program compiled by "
                   "AOTInductor: one .pt2 package for Python or C++, minutes to build), torchscript (whole pipeline, deprecated "
                   "by PyTorch), onnx (network parts), safetensors, detectron (.pkl), timm (ImageNet backbones), "
                   "torchvision (backbones and Mask R-CNN).")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write (onnx also writes OUT's .box_head.onnx and .mask_head.onnx siblings; timm and "
                   "torchvision write OUT.json beside OUT).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Detectron YAML config for a .pkl that embeds none.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Device an export or aoti artifact is traced and compiled for.")
@click.option("--no-verify", is_flag=True, help="Skip running the artifact on the bundled image after writing it.")
@opts_option
def command(source: str, target: str, output: str, config_path, device: str, no_verify: bool, opts) -> None:
    """Export SOURCE (a model id, a Detectron .pkl or a converted file) to OUT.

    The artifact is written under a temporary name, loaded with its own runtime,
    run on the bundled image and compared with the in-process model; only if it
    matches is it renamed to OUT.  The largest differences are printed.
    """
    from gnconvert.checkpoint.sources import load_source
    from gnconvert.export import export, output_paths

    output_paths(target, output)  # an unwritable OUT fails before the model is loaded
    ckpt = load_source(source, config_path=config_path, opts=list(opts))
    result = export(ckpt, target, output, verify=not no_verify, device=device)
    click.echo(f"wrote {', '.join(result.paths)} in {result.export_seconds:.1f}s")
    if result.report is not None:
        click.echo(result.report.format())
    if target == "torchscript":
        click.echo("note: PyTorch deprecates TorchScript; prefer --to export (a torch.export program "
                   "of the same pipeline, bit for bit)")
