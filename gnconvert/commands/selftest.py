"""gnconvert selftest: offline end-to-end parity check against Detectron's own outputs."""
from __future__ import annotations

import click

from gnconvert.commands.options import compile_option, device_option, precision_option
from gnconvert.errors import ParityError


@click.command("selftest")
@device_option
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="where to write the temporary ~370 MB checkpoint (default: the system temp folder)")
@precision_option
@compile_option
def command(device, workdir, precision, compile_):
    """Build a seeded Detectron checkpoint, convert it, run it, and compare with Detectron.

    Needs no network and no dataset; exits non-zero on any mismatch.  With --precision or
    --compile, also measures that fast mode's fidelity to Detectron's outputs (informational).
    """
    from gnconvert.fidelity import selftest
    from gnconvert.inference.modes import RunMode

    result = selftest.run(device=device, workdir=workdir, log=lambda s: click.echo(s, err=True),
                          mode=RunMode.of(precision, compile_))
    click.echo(result.format())
    if not result.passed:
        raise ParityError("selftest failed: see the per-stage report above for the first stage that disagrees")
