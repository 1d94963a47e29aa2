"""Getting Detectron's published files into the local cache, intact.

Detectron's file server keeps an MD5 next to every file (`<url>.md5sum`); a file
only appears under its final cache name after its MD5 matched, and a cached file
is re-hashed against the stored MD5 before it is reused.  Transfers stream with
constant memory into `<name>.part` in the same folder (so the final rename is
atomic), resume with HTTP Range, retry connection errors, timeouts and 5xx with
backoff, and hold a per-file lock so concurrent processes don't collide.

No torch here: `gnconvert list` / `fetch` must start fast.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import re
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

import filelock
import requests
import urllib3
from tqdm import tqdm

from gnconvert import __version__
from gnconvert.zoo import catalog
from gnconvert.atomic import atomic_path
from gnconvert.errors import DownloadError, UsageError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WHATS = ("model", "boxes", "masks", "all")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# --- where things are -------------------------------------------------------

def base_url() -> str:
    """$GNCONVERT_BASE_URL (mirrors, tests), else Detectron's official file server.

    http(s):// mirrors are fetched like the server; file:// mirrors (a folder with the
    server's layout and its .md5sum files, common on air-gapped sites) are copied."""
    from urllib.parse import urlparse

    url = os.environ.get("GNCONVERT_BASE_URL") or catalog.load_catalog().base_url
    parsed = urlparse(url)
    ok = (parsed.scheme in ("http", "https") and parsed.netloc) or (parsed.scheme == "file" and parsed.path)
    if not ok:
        raise UsageError(f"GNCONVERT_BASE_URL={url!r} is not an http://, https:// or file:// URL of a mirror; "
                         "e.g. http://127.0.0.1:8765/detectron or file:///srv/detectron-mirror")
    return url.rstrip("/")


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


def _md5_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".md5sum")


def _stamp(path: Path) -> str:
    """Size and modification time of a file, recorded beside its MD5 when it was verified."""
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _record_verified(final: Path, md5: str) -> None:
    _write_atomic(_md5_sidecar(final), f"{md5}\n{_stamp(final)}\n")


def unchanged_since_verified(path: Path) -> bool:
    """The file is as it was when its MD5 was last checked (same size and time): listing
    can say "cached" without hashing; anything else must be re-checked before use."""
    try:
        lines = _md5_sidecar(path).read_text().splitlines()
        return len(lines) > 1 and lines[1].strip() == _stamp(path)
    except OSError:
        return False


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


@dataclass(frozen=True)
class Settings:
    """Transfer knobs; environment variables so tests (and slow links) can tune them."""

    retries: int = 4
    backoff_s: float = 1.0  # doubled after each failed attempt
    timeout_s: float = 30.0  # connect, and each read
    lock_timeout_s: float = 3 * 3600.0

    @classmethod
    def from_env(cls) -> "Settings":
        def num(name, default, kind=float):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise UsageError(f"{name}={raw!r} is not a number; unset it or give a number") from None

        return cls(
            retries=num("GNCONVERT_RETRIES", cls.retries, int),
            backoff_s=num("GNCONVERT_RETRY_BACKOFF", cls.backoff_s),
            timeout_s=num("GNCONVERT_TIMEOUT", cls.timeout_s),
            lock_timeout_s=num("GNCONVERT_LOCK_TIMEOUT", cls.lock_timeout_s),
        )


# --- public API -------------------------------------------------------------

def cached_path(model_id: str, what: str = "model", verify: bool = True) -> Optional[Path]:
    """The cached file if present and (unless verify=False) matching its stored MD5."""
    path = local_path(catalog.get(model_id).file(what))
    if verify:
        return path if _is_intact(path) else None
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
    if not force and _is_intact(final):
        return final
    if offline():
        raise DownloadError(
            f"GNCONVERT_OFFLINE is set and {rel.rsplit('/', 1)[-1]} has no verified copy in the cache "
            f"({final}); unset GNCONVERT_OFFLINE to download it, or copy it there with its .md5sum"
        )
    settings = Settings.from_env()
    show = sys.stderr.isatty() if progress is None else progress
    created = _make_dirs(final.parent)
    try:
        with _locked(final, settings), _session() as session:
            if not force and _is_intact(final):
                log.info("reusing %s, downloaded meanwhile by another process", final)
                return final
            if url.startswith("file:"):
                _copy_from_mirror(url, final, show)
                return final
            expected = _fetch_md5(session, url, settings)
            if not force and final.is_file() and file_md5(final) == expected:
                _record_verified(final, expected)  # e.g. a file copied in by hand
                return final
            if not force:  # corrupt: never leave it under the final name, even if the download fails
                _remove(final)
                _remove(_md5_sidecar(final))
            _download_verified(session, url, final, expected, settings, show)
    except BaseException:
        _remove_empty(created)
        raise
    return final


def _copy_from_mirror(url: str, final: Path, show: bool) -> None:
    """A file:// mirror: its .md5sum, then the file copied (hashed as it streams) and verified."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    source = Path(url2pathname(urlparse(url).path))
    try:
        expected = _parse_md5(Path(str(source) + ".md5sum").read_text(errors="replace"), f"{url}.md5sum")
        size = source.stat().st_size
    except FileNotFoundError as e:
        raise DownloadError(f"the mirror has no {e.filename}; check GNCONVERT_BASE_URL (now {base_url()})") from None
    except OSError as e:
        raise DownloadError(f"cannot read {e.filename} from the mirror ({e.strerror}); check GNCONVERT_BASE_URL") from None
    part = _part(final)
    _check_free_space(part, size)
    h = hashlib.md5()
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name[:40], disable=not show,
               file=sys.stderr, leave=False)
    try:
        with open(source, "rb") as src, _open_part(part, "wb") as dst, bar:
            for block in iter(lambda: src.read(CHUNK), b""):
                _write_all(dst, block, part)
                h.update(block)
                bar.update(len(block))
    except OSError as e:
        _remove(part)
        raise DownloadError(f"cannot read {source} from the mirror ({e.strerror}); check GNCONVERT_BASE_URL") from None
    except BaseException:
        _remove(part)
        raise
    if h.hexdigest() != expected:
        _remove(part)
        raise DownloadError(f"MD5 mismatch for {url}: expected {expected}, got {h.hexdigest()}; "
                            "nothing was kept: the mirror's copy is damaged")
    os.replace(part, final)
    _record_verified(final, expected)


# --- integrity --------------------------------------------------------------

def file_md5(path) -> str:
    """MD5 of a file, read in blocks (constant memory)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _is_intact(path: Path) -> bool:
    try:
        stored = _md5_sidecar(path).read_text().split()[0].lower()
        return path.is_file() and file_md5(path) == stored
    except (OSError, IndexError):
        return False


def _parse_md5(text: str, url: str) -> str:
    token = text.strip().split()[0].lower() if text.strip() else ""
    if not _MD5_RE.match(token):
        if "<html" in text[:512].lower() or "<!doctype" in text[:512].lower():
            raise DownloadError(f"the server sent an HTML page instead of the MD5 at {url}; "
                                f"check GNCONVERT_BASE_URL or try again later")
        raise DownloadError(f"{url} does not hold an MD5 (got {text[:40]!r}); check GNCONVERT_BASE_URL")
    return token


def _looks_like_html(head: bytes) -> bool:
    head = head[:512].lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


# --- transfer ---------------------------------------------------------------

class _Retryable(Exception):
    """A transient failure: connection error, timeout, 5xx, short body."""


class _Restart(Exception):
    """The partial file cannot be continued; start again from byte 0."""


@contextmanager
def _session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        # identity: Content-Length and Range offsets must count the file's own bytes
        s.headers.update({"User-Agent": f"gnconvert/{__version__}", "Accept-Encoding": "identity"})
        yield s


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _with_retries(url: str, settings: Settings, attempt_fn):
    """Run attempt_fn, retrying transient failures with exponential backoff, a bounded number of times."""
    for attempt in range(settings.retries + 1):
        try:
            return attempt_fn()
        except _Retryable as e:
            if attempt == settings.retries:
                raise DownloadError(f"could not download {url} after {attempt + 1} attempts ({e}); "
                                    f"check the network or GNCONVERT_BASE_URL and run again") from None
            delay = settings.backoff_s * 2 ** attempt
            log.warning("%s: %s; retrying in %.1fs", url, e, delay)
            time.sleep(delay)


def _check_status(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code >= 500 or code in (408, 429):
        raise _Retryable(f"HTTP {code} {resp.reason}")
    if code in (403, 404, 410):
        raise DownloadError(f"HTTP {code} {resp.reason} for {url}: the server does not have this file; "
                            f"check GNCONVERT_BASE_URL (now {base_url()})")
    raise DownloadError(f"HTTP {code} {resp.reason} for {url}; check GNCONVERT_BASE_URL")


def _get(session: requests.Session, url: str, settings: Settings, headers=None) -> requests.Response:
    try:
        return session.get(url, headers=headers, stream=True, timeout=settings.timeout_s)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _Retryable(_one_line(e)) from None


def _fetch_md5(session: requests.Session, url: str, settings: Settings) -> str:
    md5_url = url + ".md5sum"

    def attempt() -> str:
        with _get(session, md5_url, settings) as resp:
            _check_status(resp, md5_url)
            try:
                text = resp.content[:4096].decode("utf-8", "replace")
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                raise _Retryable(_one_line(e)) from None
        return _parse_md5(text, md5_url)

    return _with_retries(md5_url, settings, attempt)


def _download_verified(session, url, final: Path, expected: str, settings: Settings, show: bool) -> None:
    part = _part(final)
    for fresh_try in (False, True):
        resumed = part.is_file() and part.stat().st_size > 0
        try:
            got = _with_retries(url, settings, lambda: _download_once(session, url, part, settings, show))
        except DownloadError as e:
            kept = part.stat().st_size if part.is_file() else 0
            if kept:
                raise DownloadError(f"{e}; the {kept} bytes received are kept in {part} "
                                    f"and the next run will resume from there") from None
            raise
        if got == expected:
            os.replace(part, final)
            _record_verified(final, expected)
            return
        html = _looks_like_html(_read_head(part))
        _remove(part)
        if resumed and not fresh_try:
            log.warning("%s: MD5 mismatch after resuming a partial download; starting over", url)
            continue
        if html:
            raise DownloadError(f"the server sent an HTML page instead of {url}; "
                                f"check GNCONVERT_BASE_URL or try again later")
        raise DownloadError(f"MD5 mismatch for {url}: expected {expected}, got {got}; "
                            f"nothing was kept, run again (or report a bad mirror)")


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def _download_once(session, url: str, part: Path, settings: Settings, show: bool) -> str:
    try:
        return _stream_to_part(session, url, part, settings, show)
    except _Restart as e:
        log.info("%s: %s; downloading from the start", url, e)
        _remove(part)
        return _stream_to_part(session, url, part, settings, show)


def _stream_to_part(session, url: str, part: Path, settings: Settings, show: bool) -> str:
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else None
    with _get(session, url, settings, headers) as resp:
        if resp.status_code == 416 and offset:
            raise _Restart("the server cannot continue the partial file (HTTP 416)")
        _check_status(resp, url)
        if resp.headers.get("Content-Type", "").startswith("text/html") and not url.endswith(".html"):
            _remove(part)
            raise DownloadError(f"the server sent an HTML page instead of {url}; "
                                f"check GNCONVERT_BASE_URL or try again later")
        if resp.status_code == 206:
            start = _content_range_start(resp)
            if start != offset:
                raise _Restart(f"the server resumed at byte {start}, not {offset}")
        else:
            offset = 0  # 200: the server ignored Range; the body is the whole file
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        _check_free_space(part, length)
        name = url.rsplit("/", 1)[-1]
        bar = tqdm(total=(offset + length) if length is not None else None, initial=offset, unit="B",
                   unit_scale=True, unit_divisor=1024, desc=name[:40], disable=not show,
                   file=sys.stderr, leave=False)
        f = _open_part(part, "ab" if offset else "wb")
        hasher = _BackgroundMD5()
        received, done = 0, False
        try:
            if offset:  # the kept bytes are hashed once, never the whole file twice
                with open(part, "rb") as old:
                    for block in iter(lambda: old.read(CHUNK), b""):
                        hasher.update(block)
            with bar:
                for block in _blocks(resp):
                    if received == 0 and offset == 0 and _looks_like_html(block):
                        raise DownloadError(f"the server sent an HTML page instead of {url}; "
                                            f"check GNCONVERT_BASE_URL or try again later")
                    _write_all(f, block, part)
                    hasher.update(block)
                    received += len(block)
                    bar.update(len(block))
            done = True
        except _Retryable as e:
            raise _Retryable(f"transfer broke after {offset + received} bytes: {e}") from None
        except DownloadError:
            f.close()
            _remove(part)
            raise
        finally:
            f.close()
            if not done:
                hasher.abandon()
        digest = hasher.hexdigest()
        if length is not None and received < length:
            raise _Retryable(f"connection closed after {offset + received} of {offset + length} bytes")
    return digest


def _blocks(resp: requests.Response) -> Iterator[bytearray]:
    """The body in ~CHUNK blocks, losing nothing: bytes that arrived before a drop or a
    timeout are yielded before the failure is raised (as _Retryable), so a resume starts
    exactly where the data stopped."""
    resp.raw.enforce_content_length = False  # a short body is the caller's to detect
    block = bytearray()
    try:
        while data := resp.raw.read1(CHUNK, decode_content=False):
            block += data
            if len(block) >= CHUNK:
                yield block
                block = bytearray()  # the yielded one now belongs to the writer and the hasher
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        if block:
            yield block
        raise _Retryable(_one_line(e)) from None
    if block:
        yield block


def _content_range_start(resp: requests.Response) -> int:
    m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else -1


class _BackgroundMD5:
    """MD5 in a second thread: hashlib releases the GIL, so hashing overlaps the socket reads."""

    def __init__(self):
        self._md5 = hashlib.md5()
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=8)  # bounds memory
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while (block := self._queue.get()) is not None:
            self._md5.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._md5.hexdigest()

    def abandon(self) -> None:
        self._queue.put(None)
        self._thread.join()


# --- files, folders, locks --------------------------------------------------

def _check_free_space(part: Path, length: Optional[int]) -> None:
    if length is None:
        return
    free = shutil.disk_usage(part.parent).free
    if free < length:
        raise DownloadError(
            f"not enough disk space in {part.parent}: {length / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free; free some space or set GNCONVERT_CACHE to another folder"
        )


def _open_part(part: Path, mode: str):
    try:
        return open(part, mode, buffering=0)  # unbuffered: a failed write fails here, not at close
    except OSError as e:
        raise DownloadError(f"cannot write {part} ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None


def _write_all(f, chunk: bytes, part: Path) -> None:
    """Write a whole chunk; a full disk becomes a clear error (the caller removes the .part)."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[f.write(view):]
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise DownloadError(
                f"ran out of space writing {part} ({e.strerror}); nothing was kept: "
                f"free some disk space or set GNCONVERT_CACHE to another folder"
            ) from None
        raise DownloadError(f"cannot write {part} ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None


def _make_dirs(folder: Path) -> Optional[Path]:
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


def _remove_empty(top: Optional[Path]) -> None:
    """Remove the folders a failed fetch created, if it left nothing in them."""
    if top is None:
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def _locked(final: Path, settings: Settings):
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
            lock.acquire(timeout=settings.lock_timeout_s)
    except filelock.Timeout:
        raise DownloadError(f"gave up after {settings.lock_timeout_s:.0f}s waiting for another process "
                            f"to finish downloading {final}; run again when it is done") from None
    except OSError as e:
        raise DownloadError(f"cannot lock {final}.lock ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None
    try:
        yield
    finally:
        lock.release()


def _write_atomic(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    except OSError as e:
        raise DownloadError(f"cannot write {path} ({e.strerror}); "
                            f"set GNCONVERT_CACHE to a writable folder") from None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
