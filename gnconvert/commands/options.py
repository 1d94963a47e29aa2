"""Options several commands share, spelled once so they read and behave the same everywhere."""
from __future__ import annotations

import re
from pathlib import Path

import click

device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (CUDA if present), cpu, cuda or cuda:N.")
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="Detectron YAML config for a .pkl that embeds none (e.g. an ImageNet backbone).")
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
allow_slow_option = click.option(
    "--allow-slow", is_flag=True,
    help="Run a fast mode even where this machine would run it slower than fp32 (it is refused otherwise).")


def runtime_options(command):
    """--device, --precision, --compile and --allow-slow, which `resolve_runtime` turns into one Runtime."""
    for option in (allow_slow_option, compile_option, precision_option, device_option):
        command = option(command)
    return command


def resolve_runtime(device: str, precision: str = "fp32", compile_: bool = False, allow_slow: bool = False):
    """The run's Runtime, checked before any file is looked at; an allowed slow mode's warning on stderr."""
    from gnconvert.runtime import Runtime

    runtime = Runtime.resolve(device, precision, compile_, allow_slow)
    for message in runtime.warnings:
        click.echo(f"gnconvert: warning: {message}", err=True)
    return runtime


def default_output(command: str, source: str) -> Path:
    """./COMMAND-SOURCE, with the source's name made safe for a folder name."""
    return Path(f"{command}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem or source))
