"""The local cache: where each published file lives, what proves it intact, and the locks,
folders and partial files around a download.

A file is verified when its MD5 matched the server's; `<file>.md5sum` then holds that MD5 and
the file's size and modification time, so `gnconvert list` can tell an untouched file from a
changed one without hashing 370 MB.  No torch here.
"""
from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import filelock

from gnconvert import atomic
from gnconvert.errors import DownloadError

log = logging.getLogger("gnconvert.zoo.download")
CHUNK = 1 << 20


def cache_dir() -> Path:
    """$GNCONVERT_CACHE, else $XDG_CACHE_HOME/gnconvert, else ~/.cache/gnconvert."""
    if os.environ.get("GNCONVERT_CACHE"):
        return Path(os.environ["GNCONVERT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "gnconvert"


def offline() -> bool:
    return os.environ.get("GNCONVERT_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def local_path(rel: str) -> Path:
    """The cache keeps the server's relative path, like Detectron's own cache does."""
    return cache_dir() / rel


def md5_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".md5sum")


def _stamp(path: Path) -> str:
    """Size and modification time of a file, recorded beside its MD5 when it was verified."""
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def record_verified(final: Path, md5: str) -> None:
    atomic.write_bytes_atomic(md5_sidecar(final), f"{md5}\n{_stamp(final)}\n".encode(), ELSEWHERE, DownloadError)


def unchanged_since_verified(path: Path) -> bool:
    """The file is as it was when its MD5 was last checked (same size and time): listing
    can say "cached" without hashing; anything else must be re-checked before use."""
    try:
        lines = md5_sidecar(path).read_text().splitlines()
        return len(lines) > 1 and lines[1].strip() == _stamp(path)
    except OSError:
        return False


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def file_digest(path, algorithm: str = "md5") -> str:
    """Hex digest of a file (MD5 unless told), read in blocks (constant memory)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def is_intact(path: Path) -> bool:
    try:
        stored = md5_sidecar(path).read_text().split()[0].lower()
        return path.is_file() and file_digest(path) == stored
    except (OSError, IndexError):
        return False


ELSEWHERE = "set GNCONVERT_CACHE to another folder"  # what to do when the cache cannot be written


def check_free_space(part: Path, length: Optional[int]) -> None:
    if length is not None:
        atomic.ensure_free_space(part, length, ELSEWHERE, DownloadError)


def open_part(part: Path, mode: str):
    try:
        return open(part, mode, buffering=0)  # unbuffered: a failed write fails here, not at close
    except OSError as e:
        raise DownloadError(f"cannot write {part} ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None


def write_all(f, chunk: bytes | bytearray, part: Path) -> None:
    """Write a whole chunk; a full disk becomes a clear error (the caller removes the .part)."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[f.write(view):]
    except OSError as e:
        raise atomic.output_error(part, e, ELSEWHERE, DownloadError) from None


def make_dirs(folder: Path) -> Optional[Path]:
    """Create the folder (and parents); returns the topmost folder created, to remove again
    if the fetch fails and leaves it empty."""
    top = None
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        top = parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the cache folder {folder} ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DownloadError(f"the cache folder {folder} is not writable; "
                            f"set GNCONVERT_CACHE to a writable folder")
    return top


def remove_empty(top: Optional[Path]) -> None:
    """Remove the folders a failed fetch created, if it left nothing in them."""
    if top is None:
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def locked(final: Path, timeout_s: float):
    """One downloader per file across processes; the lock dies with its process (flock).  Lock
    files live in the cache's hidden .locks folder, not beside the models."""
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(locks / (final.relative_to(cache_dir()).as_posix().replace("/", "__") + ".lock")))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log.warning("waiting for another gnconvert process downloading %s", final.name)
            lock.acquire(timeout=timeout_s)
    except filelock.Timeout:
        raise DownloadError(f"gave up after {timeout_s:.0f}s waiting for another process "
                            f"to finish downloading {final}; run again when it is done") from None
    except OSError as e:
        raise DownloadError(f"cannot lock {final}.lock ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None
    try:
        yield
    finally:
        lock.release()


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
