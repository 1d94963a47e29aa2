"""Options several commands share, spelled once so they read and behave the same everywhere."""
from __future__ import annotations

import click

device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (CUDA if present), cpu, cuda or cuda:N.")
opts_option = click.option("--opts", "opts", multiple=True, nargs=2, metavar="KEY VALUE",
                           help="Override Detectron test settings, last on the line: "
                                "--opts TEST.SCALE 600 TEST.MAX_SIZE 1000.")
precision_option = click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "tf32"]), default="fp32", show_default=True,
    help="fp32: exact, Detectron's numerics. bf16: bfloat16 network (CPU and CUDA), several times faster, "
         "not exact. tf32: CUDA tensor cores, not exact.")
compile_option = click.option(
    "--compile/--no-compile", "compile_", default=False, show_default=True,
    help="torch.compile the network (first run compiles for about a minute; cached for later runs); "
         "not bit-exact.")
