"""`gnconvert convert SOURCE -o OUT`: a self-describing converted checkpoint."""
from __future__ import annotations

from collections import Counter

import click

from gnconvert.commands.options import config_option, opts_option


@click.command("convert")
@click.argument("source")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the converted .safetensors file.")
@config_option
@opts_option
def command(source: str, output: str, config_path, opts) -> None:
    """Convert SOURCE (a model id, a Detectron .pkl, or a converted file) to OUT.

    OUT holds the weights under PyTorch names plus the architecture and test
    settings, provenance (model id, source MD5) and the dropped-blob list, so it
    loads later without the .pkl.  Written atomically: a failure leaves no OUT.
    """
    from gnconvert.checkpoint.converted import save_converted
    from gnconvert.checkpoint.name_mapping import describe
    from gnconvert.checkpoint.sources import load_source

    ckpt = load_source(source, config_path=config_path, opts=list(opts))
    save_converted(output, ckpt.state_dict, ckpt.arch, ckpt.provenance, ckpt.dropped, ckpt.cfg_text)
    kinds = Counter("momentum" if r.startswith("optimizer momentum") else n for n, r in ckpt.dropped.items())
    dropped = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(kinds.items())) or "none"
    click.echo(f"wrote {output}: {describe(ckpt.arch)}, {ckpt.num_parameters:,} parameters in "
               f"{len(ckpt.state_dict)} tensors; dropped {len(ckpt.dropped)} blobs ({dropped})")
