"""`gnconvert list`: Detectron's GN models, what they scored, and what is cached here."""
from __future__ import annotations

import json
from typing import List, Tuple

import click

from gnconvert.architecture.record import Kind
from gnconvert.zoo import catalog, download


def _cached(entry) -> dict:
    """what -> local path for files present with their MD5 (not re-hashed: listing stays instant)."""
    found = {}
    for what in entry.files:
        path = download.cached_path(entry.id, what, verify=False)
        found[what] = str(path) if path else None
    return found


def _fmt(value) -> str:
    return "-" if value is None else str(value)


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON for machines.")
def command(as_json: bool) -> None:
    """List the catalog: id, model, schedule, published AP, downloads, cache state."""
    entries = list(catalog.load_catalog())
    if as_json:
        click.echo(json.dumps([dict(e.to_dict(), cached=_cached(e)) for e in entries], indent=2))
        return
    header = ("ID", "MODEL", "SCHD", "BOX AP", "MASK AP", "DOWNLOAD", "CACHED")
    rows: List[Tuple[str, ...]] = []
    for e in entries:
        cached = [w for w, p in _cached(e).items() if p]
        if e.kind == Kind.CLASSIFIER:
            model, box, mask = f"{e.name} ImageNet, top-1 err {e.published['top1_error']}%", "-", "-"
        else:
            model = e.name + (" (superseded)" if e.superseded else "")
            box, mask = _fmt(e.published.get("box_ap")), _fmt(e.published.get("mask_ap"))
        rows.append((e.id, model, _fmt(e.lr_schedule), box, mask,
                     ",".join(e.files) or "none published", ",".join(cached) or "-"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
