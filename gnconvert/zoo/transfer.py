"""Moving bytes from Detectron's server (or a mirror) into the cache, verified.

Transfers stream with constant memory into `<name>.part` in the same folder (so the final rename
is atomic), hash while they stream (MD5 in a second thread), resume with HTTP Range, and retry
connection errors, timeouts and 5xx with backoff a bounded number of times; a file:// mirror is
copied and checked the same way.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import requests
import urllib3
from tqdm import tqdm

from gnconvert import __version__
from gnconvert.errors import DownloadError, UsageError
from gnconvert.zoo import catalog
from gnconvert.zoo.cache import (
    CHUNK,
    check_free_space,
    open_part,
    part_path,
    record_verified,
    remove,
    write_all,
)

log = logging.getLogger("gnconvert.zoo.download")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


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


@dataclass(frozen=True)
class Settings:
    """Transfer knobs; environment variables so tests (and slow links) can tune them."""

    retries: int = 4
    backoff_s: float = 1.0  # doubled after each failed attempt
    timeout_s: float = 30.0  # connect, and each read
    lock_timeout_s: float = 3 * 3600.0

    @classmethod
    def from_env(cls) -> Settings:
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


def parse_md5(text: str, url: str) -> str:
    token = text.strip().split()[0].lower() if text.strip() else ""
    if not _MD5_RE.match(token):
        if "<html" in text[:512].lower() or "<!doctype" in text[:512].lower():
            raise _html_page(f"the MD5 at {url}")
        raise DownloadError(f"{url} does not hold an MD5 (got {text[:40]!r}); check GNCONVERT_BASE_URL")
    return token


def _html_page(what: str) -> DownloadError:
    return DownloadError(f"the server sent an HTML page instead of {what}; check GNCONVERT_BASE_URL or try again later")


def _looks_like_html(head: bytes | bytearray) -> bool:
    head = head[:512].lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


class _Retryable(Exception):
    """A transient failure: connection error, timeout, 5xx, short body."""


class _Restart(Exception):
    """The partial file cannot be continued; start again from byte 0."""


@contextmanager
def open_session() -> Iterator[requests.Session]:
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


def fetch_md5(session: requests.Session, url: str, settings: Settings) -> str:
    md5_url = url + ".md5sum"

    def attempt() -> str:
        with _get(session, md5_url, settings) as resp:
            _check_status(resp, md5_url)
            try:
                text = resp.content[:4096].decode("utf-8", "replace")
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                raise _Retryable(_one_line(e)) from None
        return parse_md5(text, md5_url)

    return _with_retries(md5_url, settings, attempt)


def download_verified(session, url, final: Path, expected: str, settings: Settings, show: bool) -> None:
    part = part_path(final)
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
            record_verified(final, expected)
            return
        html = _looks_like_html(_read_head(part))
        remove(part)
        if resumed and not fresh_try:
            log.warning("%s: MD5 mismatch after resuming a partial download; starting over", url)
            continue
        if html:
            raise _html_page(url)
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
        remove(part)
        return _stream_to_part(session, url, part, settings, show)


def _stream_to_part(session, url: str, part: Path, settings: Settings, show: bool) -> str:
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else None
    with _get(session, url, settings, headers) as resp:
        if resp.status_code == 416 and offset:
            raise _Restart("the server cannot continue the partial file (HTTP 416)")
        _check_status(resp, url)
        if resp.headers.get("Content-Type", "").startswith("text/html") and not url.endswith(".html"):
            remove(part)
            raise _html_page(url)
        if resp.status_code == 206:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else -1
            if start != offset:
                raise _Restart(f"the server resumed at byte {start}, not {offset}")
        else:
            offset = 0  # 200: the server ignored Range; the body is the whole file
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        check_free_space(part, length)
        name = url.rsplit("/", 1)[-1]
        bar = tqdm(total=(offset + length) if length is not None else None, initial=offset, unit="B",
                   unit_scale=True, unit_divisor=1024, desc=name[:40], disable=not show, leave=False)
        f = open_part(part, "ab" if offset else "wb")
        hasher = _BackgroundMD5()
        received = 0
        try:
            if offset:  # the kept bytes are hashed once, never the whole file twice
                with open(part, "rb") as old:
                    for kept in iter(lambda: old.read(CHUNK), b""):
                        hasher.update(kept)
            with bar:
                for block in _blocks(resp):
                    if received == 0 and offset == 0 and _looks_like_html(block):
                        raise _html_page(url)
                    write_all(f, block, part)
                    hasher.update(block)
                    received += len(block)
                    bar.update(len(block))
        except _Retryable as e:
            raise _Retryable(f"transfer broke after {offset + received} bytes: {e}") from None
        except DownloadError:
            f.close()
            remove(part)
            raise
        finally:
            f.close()
            hasher.abandon()  # the thread stops here on every path; hexdigest below then only reads the digest
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


class _BackgroundMD5:
    """MD5 in a second thread: hashlib releases the GIL, so hashing overlaps the socket reads."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self._queue: queue.Queue[Optional[bytes | bytearray]] = queue.Queue(maxsize=8)  # bounds memory
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._md5.update(block)

    def update(self, block: bytes | bytearray) -> None:
        self._queue.put(block)

    def hexdigest(self) -> str:
        self.abandon()
        return self._md5.hexdigest()

    def abandon(self) -> None:
        self._queue.put(None)
        self._thread.join()


def copy_from_mirror(url: str, final: Path, show: bool) -> None:
    """A file:// mirror: its .md5sum, then the file copied (hashed as it streams) and verified."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    source = Path(url2pathname(urlparse(url).path))
    try:
        expected = parse_md5(Path(str(source) + ".md5sum").read_text(errors="replace"), f"{url}.md5sum")
        size = source.stat().st_size
    except FileNotFoundError as e:
        raise DownloadError(f"the mirror has no {e.filename}; check GNCONVERT_BASE_URL (now {base_url()})") from None
    except OSError as e:
        raise DownloadError(f"cannot read {e.filename} from the mirror ({e.strerror}); check GNCONVERT_BASE_URL") from None
    part = part_path(final)
    check_free_space(part, size)
    h = hashlib.md5()
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name[:40], disable=not show,
               leave=False)
    try:
        with open(source, "rb") as src, open_part(part, "wb") as dst, bar:
            for block in iter(lambda: src.read(CHUNK), b""):
                write_all(dst, block, part)
                h.update(block)
                bar.update(len(block))
    except OSError as e:
        remove(part)
        raise DownloadError(f"cannot read {source} from the mirror ({e.strerror}); check GNCONVERT_BASE_URL") from None
    except BaseException:
        remove(part)
        raise
    if h.hexdigest() != expected:
        remove(part)
        raise DownloadError(f"MD5 mismatch for {url}: expected {expected}, got {h.hexdigest()}; "
                            "nothing was kept: the mirror's copy is damaged")
    os.replace(part, final)
    record_verified(final, expected)
