"""Getting Detectron's published files into the local cache, intact.

Detectron's file server keeps an MD5 next to every file (`<url>.md5sum`); a file only appears
under its final cache name after its MD5 matched (`transfer`), and a cached file is re-hashed
against the stored MD5 before it is reused (`cache`).  A per-file lock keeps concurrent
processes from colliding.  No torch here: `gnconvert list` / `fetch` must start fast.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, Optional

from gnconvert.errors import DownloadError, UsageError
from gnconvert.zoo import catalog
from gnconvert.zoo.cache import (
    file_digest,
    is_intact,
    local_path,
    locked,
    make_dirs,
    md5_sidecar,
    offline,
    record_verified,
    remove,
    remove_empty,
    unchanged_since_verified,
)
from gnconvert.zoo.transfer import Settings, base_url, copy_from_mirror, download_verified, fetch_md5, open_session

log = logging.getLogger(__name__)

WHATS = ("model", "boxes", "masks", "all")
__all__ = ["WHATS", "base_url", "cached_path", "fetch", "fetch_file", "file_digest"]


def cached_path(model_id: str, what: str = "model", verify: bool = True) -> Optional[Path]:
    """The cached file if present and (unless verify=False) matching its stored MD5."""
    path = local_path(catalog.get(model_id).file(what))
    if verify:
        return path if is_intact(path) else None
    return path if path.is_file() and unchanged_since_verified(path) else None


def fetch(model_id: str, what: str = "model", force: bool = False,
          progress: Optional[bool] = None) -> Dict[str, Path]:
    """Download (or reuse from the cache) one model's published files: {what: local path}.

    `what` is "model", "boxes", "masks" or "all"; `progress` None means a bar only on a terminal.
    """
    if what not in WHATS:
        raise UsageError(f"--what must be one of {', '.join(WHATS)}, not '{what}'")
    entry = catalog.get(model_id)
    whats = list(entry.files) if what == "all" else [what]
    rels = {w: entry.file(w) for w in whats}  # raises NoDownloadError / unknown what first
    return {w: fetch_file(rel, force=force, progress=progress) for w, rel in rels.items()}


def fetch_file(rel: str, force: bool = False, progress: Optional[bool] = None) -> Path:
    """Fetch one server-relative path into the cache and return its verified local path."""
    final = local_path(rel)
    url = f"{base_url()}/{rel}"
    if not force and is_intact(final):
        return final
    if offline():
        raise DownloadError(
            f"GNCONVERT_OFFLINE is set and {rel.rsplit('/', 1)[-1]} has no verified copy in the cache "
            f"({final}); unset GNCONVERT_OFFLINE to download it, or copy it there with its .md5sum"
        )
    settings = Settings.from_env()
    show = sys.stderr.isatty() if progress is None else progress
    created = make_dirs(final.parent)
    try:
        with locked(final, settings.lock_timeout_s), open_session() as session:
            if not force and is_intact(final):
                log.info("reusing %s, downloaded meanwhile by another process", final)
                return final
            if url.startswith("file:"):
                copy_from_mirror(url, final, show)
                return final
            expected = fetch_md5(session, url, settings)
            if not force and final.is_file() and file_digest(final) == expected:
                record_verified(final, expected)  # e.g. a file copied in by hand
                return final
            if not force:  # corrupt: never leave it under the final name, even if the download fails
                remove(final)
                remove(md5_sidecar(final))
            download_verified(session, url, final, expected, settings, show)
    except BaseException:
        remove_empty(created)
        raise
    return final
