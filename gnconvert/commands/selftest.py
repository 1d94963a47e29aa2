"""gnconvert selftest: offline end-to-end parity check against Detectron's own outputs."""
from __future__ import annotations

import click

from gnconvert.commands.options import resolve_runtime, runtime_options
from gnconvert.errors import ParityError


@click.command("selftest")
@runtime_options
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="where to write the temporary ~370 MB checkpoint (default: the system temp folder)")
def command(device, precision, compile_, allow_slow, workdir):
    """Build a seeded Detectron checkpoint, convert it, run it, and compare with Detectron.

    Needs no network and no dataset; exits non-zero on any mismatch.  With --precision or
    --compile, also measures that fast mode's fidelity to Detectron's outputs (informational).
    """
    from gnconvert.fidelity import selftest

    runtime = resolve_runtime(device, precision, compile_, allow_slow)
    result = selftest.run(runtime, workdir=workdir, log=lambda s: click.echo(s, err=True))
    click.echo(result.format())
    if not result.passed:
        raise ParityError("selftest failed: see the per-stage report above for the first stage that disagrees")
