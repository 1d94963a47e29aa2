"""A real loopback HTTP server laid out like Detectron's file server, with injectable faults.

It serves a folder over 127.0.0.1 the way https://dl.fbaipublicfiles.com/detectron
does: every file has a sibling `<name>.md5sum`, URL paths are percent-decoded
(`%3A` -> `:`), and Range requests get 206 replies.  Faults are queued per path
and consumed one request at a time, so "500 then success" is `fail(path, "status",
code=500)` followed by a normal reply.

Usage from any test module (tests/ is on sys.path under pytest):

    from detectron_server import DetectronServer, detectron_server, gnconvert_env  # noqa: F401

    def test_x(detectron_server, gnconvert_env):
        paths = detectron_server.publish_model("48616381", model=b"...")
        ...

`gnconvert_env` points GNCONVERT_BASE_URL at the server and GNCONVERT_CACHE at a
fresh temp folder, with millisecond retry backoff.
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

import pytest

FAULTS = ("drop", "status", "no_length", "ignore_range", "html", "corrupt", "throttle", "stall")


@dataclass
class Fault:
    """One injected misbehaviour, used up by one request for its path.

    drop:         send headers with the full Content-Length, then `after` body bytes, then close.
    status:       reply `code` (500, 404, 403, ...) with a short text body.
    no_length:    send the body without Content-Length and close the connection to end it
                  (after `after` bytes if `after` > 0).
    ignore_range: answer 200 with the whole file even when Range was asked.
    html:         answer 200 text/html with an error page instead of the file.
    corrupt:      the right length, but byte `at` flipped.
    throttle:     the right reply, sent in `chunk`-byte pieces with `delay` seconds between them.
    stall:        send the headers and `after` body bytes, then go silent for `delay` seconds and close.
    """

    kind: str
    code: int = 500
    after: int = 0
    at: int = 0
    chunk: int = 65536
    delay: float = 0.01


@dataclass
class Request:
    method: str
    path: str  # URL path as sent, before decoding, relative to the base URL
    range: Optional[str]
    status: int = 0
    body_bytes: int = 0  # body bytes the server wrote


@dataclass
class DetectronServer:
    root: Path
    base_url: str = ""
    log: List[Request] = field(default_factory=list)
    _faults: Dict[str, List[Fault]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- content ---------------------------------------------------------
    def publish(self, rel: str, data: bytes, md5: Optional[str] = None) -> str:
        """Put `data` at server-relative `rel` (as it appears in URLs) with its .md5sum; returns the md5.

        `md5` overrides what the .md5sum file says (to publish a wrong one).
        """
        digest = hashlib.md5(data).hexdigest()
        path = self.root / unquote(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.with_name(path.name + ".md5sum").write_text((md5 or digest) + "\n")
        return digest

    def publish_model(self, model_id: str, **files: bytes) -> Dict[str, str]:
        """Publish files of a catalog model (model=..., boxes=..., masks=...); returns what -> rel path."""
        from gnconvert.zoo import catalog

        entry = catalog.get(model_id)
        rels = {what: entry.file(what) for what in files}
        for what, data in files.items():
            self.publish(rels[what], data)
        return rels

    # --- faults and observation -----------------------------------------
    def fail(self, rel: str, kind: str, times: int = 1, **kw) -> None:
        """Queue `times` faults of `kind` for the next requests of `rel` (see Fault)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._lock:
            self._faults.setdefault(rel, []).extend(Fault(kind, **kw) for _ in range(times))

    def _next_fault(self, rel: str) -> Optional[Fault]:
        with self._lock:
            queue = self._faults.get(rel)
            return queue.pop(0) if queue else None

    def requests_for(self, rel: str) -> List[Request]:
        """Requests for `rel` itself (not its .md5sum), in arrival order."""
        return [r for r in list(self.log) if r.path == rel]

    def url(self, rel: str) -> str:
        return f"{self.base_url}/{rel}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state = self.server.state
        path = urlsplit(self.path).path
        prefix = urlsplit(state.base_url).path
        rel = path[len(prefix):].lstrip("/") if path.startswith(prefix) else path.lstrip("/")
        req = Request("GET", rel, self.headers.get("Range"))
        with state._lock:
            state.log.append(req)
        fault = state._next_fault(rel)
        file = state.root / unquote(rel)
        if fault and fault.kind == "status":
            return self._small(req, fault.code, b"injected failure\n", "text/plain")
        if fault and fault.kind == "html":
            page = b"<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>\n"
            return self._small(req, 200, page, "text/html; charset=utf-8")
        if not file.is_file() or ".." in Path(unquote(rel)).parts:
            return self._small(req, 404, b"not found\n", "text/plain")
        data = file.read_bytes() if fault and fault.kind == "corrupt" else None
        size = file.stat().st_size
        start = 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if m and not (fault and fault.kind == "ignore_range"):
            start = int(m.group(1))
            if start >= size:
                return self._small(req, 416, b"range not satisfiable\n", "text/plain")
        req.status = 206 if start else 200
        self.send_response(req.status)
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        if fault and fault.kind == "no_length":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(size - start))
        self.end_headers()
        if fault and fault.kind == "stall":
            with open(file, "rb") as f:
                f.seek(start)
                self._send(req, f.read(fault.after))
            time.sleep(fault.delay)
            self.close_connection = True
            return
        if fault and fault.kind == "drop":
            with open(file, "rb") as f:
                f.seek(start)
                self._send(req, f.read(fault.after))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.kind == "no_length" and fault.after:
            with open(file, "rb") as f:
                f.seek(start)
                return self._send(req, f.read(fault.after))
        if data is not None:  # corrupt
            data = bytearray(data[start:])
            data[fault.at - start] ^= 0xFF
            return self._send(req, bytes(data))
        if fault and fault.kind == "throttle":
            with open(file, "rb") as f:
                f.seek(start)
                for block in iter(lambda: f.read(fault.chunk), b""):
                    self._send(req, block)
                    time.sleep(fault.delay)
            return
        with open(file, "rb") as f:  # the fast path: zero-copy, like a real file server
            req.body_bytes += self.connection.sendfile(f, start, size - start)

    def _small(self, req: Request, code: int, body: bytes, ctype: str):
        req.status = code
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._send(req, body)

    def _send(self, req: Request, body: bytes):
        self.wfile.write(body)
        req.body_bytes += len(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class serve_folder:
    """Context manager: serve `root` on 127.0.0.1 at `<base_url>` (path /detectron) until exit."""

    def __init__(self, root: Path, path_prefix: str = "/detectron"):
        self.state = DetectronServer(Path(root))
        self._prefix = path_prefix

    def __enter__(self) -> DetectronServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self.state
        host, port = self._httpd.server_address[:2]
        self.state.base_url = f"http://{host}:{port}{self._prefix}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self.state

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def detectron_server(tmp_path):
    """A running DetectronServer over an empty folder; publish files into it."""
    with serve_folder(tmp_path / "server") as server:
        yield server


@pytest.fixture
def gnconvert_env(detectron_server, tmp_path, monkeypatch) -> Path:
    """Point gnconvert at the loopback server and a fresh cache; returns the cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GNCONVERT_BASE_URL", detectron_server.base_url)
    monkeypatch.setenv("GNCONVERT_CACHE", str(cache))
    monkeypatch.setenv("GNCONVERT_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("GNCONVERT_RETRIES", "3")
    monkeypatch.setenv("GNCONVERT_TIMEOUT", "10")
    monkeypatch.delenv("GNCONVERT_OFFLINE", raising=False)
    return cache
