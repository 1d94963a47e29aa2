"""gnconvert selftest: offline end-to-end parity check against Detectron's own outputs."""
from __future__ import annotations

import click

from gnconvert.errors import ParityError


@click.command("selftest")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda or cuda:N")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="where to write the temporary ~370 MB checkpoint (default: the system temp folder)")
def command(device, workdir):
    """Build a seeded Detectron checkpoint, convert it, run it, and compare with Detectron.

    Needs no network and no dataset; exits non-zero on any mismatch.
    """
    from gnconvert.fidelity import selftest

    result = selftest.run(device=device, workdir=workdir, log=lambda s: click.echo(s, err=True))
    click.echo(result.format())
    if not result.passed:
        raise ParityError("selftest failed: see the per-stage report above for the first stage that disagrees")
