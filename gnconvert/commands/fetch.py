"""`gnconvert fetch ID`: download Detectron's published files into the cache, verified."""
from __future__ import annotations

import click

from gnconvert.zoo import download


@click.command("fetch")
@click.argument("model_id")
@click.option("--what", type=click.Choice(["model", "boxes", "masks", "all"]), default="model",
              show_default=True, help="Which published file(s) to fetch.")
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
def command(model_id: str, what: str, force: bool) -> None:
    """Fetch MODEL_ID's files (see `gnconvert list`) and print their local paths.

    Files are checked against the MD5 Detectron publishes next to each one.
    Environment: GNCONVERT_CACHE (cache folder), GNCONVERT_BASE_URL (a mirror),
    GNCONVERT_OFFLINE=1 (use only the cache).
    """
    for path in download.fetch(model_id, what=what, force=force).values():
        click.echo(str(path))
