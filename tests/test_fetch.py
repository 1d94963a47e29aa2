"""`gnconvert fetch` against a real loopback HTTP server laid out like Detectron's.

No mocks: real sockets, real files, MD5s computed here with hashlib from the
bytes we published.  Faults come from tests/detectron_server.py.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from detectron_server import detectron_server, gnconvert_env  # noqa: F401  (fixtures)

from gnconvert.errors import DownloadError, UsageError
from gnconvert.zoo import cache, download
from gnconvert.zoo.catalog import NoDownloadError

MODEL_ID = "48616381"
PAYLOAD = os.urandom(3 * 2**20 + 12345)  # spans several 1 MiB chunks and a ragged tail
BOXES = b'[{"image_id": 139, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}]'
MASKS = b'[{"image_id": 139, "category_id": 1, "segmentation": {"size": [4, 4], "counts": "04"}, "score": 0.9}]'


@pytest.fixture
def published(detectron_server):
    """The model's three files on the server; returns what -> server-relative path."""
    return detectron_server.publish_model(MODEL_ID, model=PAYLOAD, boxes=BOXES, masks=MASKS)


def finals(cache: Path):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".part")))


# --- success, cache, layout --------------------------------------------------

def test_fetch_downloads_verifies_and_keeps_server_layout(gnconvert_env, detectron_server, published):
    paths = download.fetch(MODEL_ID)
    path = paths["model"]
    assert path == gnconvert_env / published["model"]  # server's relative path, %3A kept as in the URL
    assert "coco_2014_train%3Acoco_2014_valminusminival" in str(path)
    assert path.read_bytes() == PAYLOAD
    stored = path.with_name(path.name + ".md5sum").read_text().split()[0]
    assert stored == hashlib.md5(PAYLOAD).hexdigest()
    assert len(detectron_server.requests_for(published["model"])) == 1
    assert not list(gnconvert_env.rglob("*.part"))


def test_fetch_all_gets_model_boxes_and_masks(gnconvert_env, published):
    paths = download.fetch(MODEL_ID, what="all")
    assert set(paths) == {"model", "boxes", "masks"}
    assert paths["boxes"].read_bytes() == BOXES and paths["masks"].read_bytes() == MASKS
    assert paths["boxes"].name == "bbox_coco_2014_minival_results.json"


def test_cached_file_is_reused_without_network(gnconvert_env, detectron_server, published, monkeypatch):
    assert download.cached_path(MODEL_ID, "model") is None
    first = download.fetch(MODEL_ID)["model"]
    n = len(detectron_server.log)
    assert download.fetch(MODEL_ID)["model"] == first
    assert len(detectron_server.log) == n  # not even the .md5sum was asked for again
    assert download.cached_path(MODEL_ID, "model") == first
    monkeypatch.setenv("GNCONVERT_OFFLINE", "1")
    assert download.fetch(MODEL_ID)["model"] == first


def test_corrupted_cache_is_detected_and_replaced(gnconvert_env, detectron_server, published):
    path = download.fetch(MODEL_ID)["model"]
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    assert download.cached_path(MODEL_ID, "model") is None
    # listing does not hash, but sees that the file changed since it was verified
    assert download.cached_path(MODEL_ID, "model", verify=False) is None
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    assert download.cached_path(MODEL_ID, "model", verify=False) == path
    assert len(detectron_server.requests_for(published["model"])) == 2


def test_corrupted_cache_is_removed_even_if_the_download_fails(gnconvert_env, detectron_server, published):
    path = download.fetch(MODEL_ID)["model"]
    path.write_bytes(PAYLOAD[:-1])
    detectron_server.fail(published["model"], "status", code=403)
    with pytest.raises(DownloadError, match="HTTP 403"):
        download.fetch(MODEL_ID)
    assert not path.exists() and finals(gnconvert_env) == []


def test_force_downloads_again(gnconvert_env, detectron_server, published):
    download.fetch(MODEL_ID)
    assert download.fetch(MODEL_ID, force=True)["model"].read_bytes() == PAYLOAD
    assert len(detectron_server.requests_for(published["model"])) == 2


def test_failed_forced_download_keeps_the_good_copy(gnconvert_env, detectron_server, published):
    path = download.fetch(MODEL_ID)["model"]
    detectron_server.fail(published["model"], "status", code=404)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download.fetch(MODEL_ID, force=True)
    assert download.cached_path(MODEL_ID, "model") == path and path.read_bytes() == PAYLOAD


def test_file_placed_by_hand_is_adopted_after_checking_the_server_md5(gnconvert_env, detectron_server,
                                                                        published):
    path = gnconvert_env / published["model"]
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)  # no .md5sum beside it
    assert download.fetch(MODEL_ID)["model"] == path
    assert detectron_server.requests_for(published["model"]) == []  # only the .md5sum was fetched


def test_base_url_with_trailing_slash(gnconvert_env, detectron_server, published, monkeypatch):
    monkeypatch.setenv("GNCONVERT_BASE_URL", detectron_server.base_url + "/")
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD


def test_md5sum_in_md5sum_tool_format_is_accepted(gnconvert_env, detectron_server):
    rel = "ImageNetPretrained/47261647/R-50-GN.pkl"
    detectron_server.publish(rel, PAYLOAD, md5=f"{hashlib.md5(PAYLOAD).hexdigest()}  R-50-GN.pkl")
    assert download.fetch("47261647")["model"].read_bytes() == PAYLOAD


# --- environment ---------------------------------------------------------------

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GNCONVERT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "gnconvert"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "gnconvert"
    monkeypatch.setenv("GNCONVERT_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


def test_base_url_default_and_override(monkeypatch):
    monkeypatch.delenv("GNCONVERT_BASE_URL", raising=False)
    assert download.base_url() == "https://dl.fbaipublicfiles.com/detectron"
    monkeypatch.setenv("GNCONVERT_BASE_URL", "http://mirror.example/detectron/")
    assert download.base_url() == "http://mirror.example/detectron"


def test_offline_forbids_network(gnconvert_env, detectron_server, published, monkeypatch):
    monkeypatch.setenv("GNCONVERT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="GNCONVERT_OFFLINE"):
        download.fetch(MODEL_ID)
    assert detectron_server.log == []
    assert not gnconvert_env.exists() or finals(gnconvert_env) == []


# --- faults: transfer --------------------------------------------------------

def test_connection_dropped_mid_body_resumes_with_range(gnconvert_env, detectron_server, published):
    rel = published["model"]
    detectron_server.fail(rel, "drop", after=1_500_000)
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    first, second = detectron_server.requests_for(rel)
    assert first.body_bytes == 1_500_000
    assert second.range == "bytes=1500000-" and second.status == 206
    assert second.body_bytes == len(PAYLOAD) - 1_500_000


def test_stalled_transfer_times_out_and_resumes(gnconvert_env, detectron_server, published, monkeypatch):
    monkeypatch.setenv("GNCONVERT_TIMEOUT", "0.3")
    rel = published["model"]
    detectron_server.fail(rel, "stall", after=500_000, delay=2.0)
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    first, second = detectron_server.requests_for(rel)
    assert second.range == "bytes=500000-"


def test_progress_bar_shows_size_and_rate(gnconvert_env, published, capsys):
    download.fetch(MODEL_ID, progress=True)
    err = capsys.readouterr().err
    assert "model_final.pkl" in err and "3.01M" in err and "B/s" in err


def test_server_error_then_success(gnconvert_env, detectron_server, published):
    rel = published["model"]
    detectron_server.fail(rel, "status", times=2, code=500)
    detectron_server.fail(rel + ".md5sum", "status", code=503)
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    assert [r.status for r in detectron_server.requests_for(rel)] == [500, 500, 200]


def test_persistent_server_error_gives_up_cleanly(gnconvert_env, detectron_server, published):
    rel = published["model"]
    detectron_server.fail(rel, "status", times=10, code=502)
    with pytest.raises(DownloadError, match="after 4 attempts.*HTTP 502") as info:
        download.fetch(MODEL_ID)
    assert "\n" not in str(info.value)
    assert len(detectron_server.requests_for(rel)) == 4  # GNCONVERT_RETRIES=3: bounded
    assert finals(gnconvert_env) == []


def test_repeated_drops_keep_the_part_and_the_next_run_resumes(gnconvert_env, detectron_server, published):
    rel = published["model"]
    detectron_server.fail(rel, "drop", times=4, after=100_000)
    with pytest.raises(DownloadError, match="400000 bytes received are kept in .*model_final.pkl.part.*resume"):
        download.fetch(MODEL_ID)
    part = (gnconvert_env / rel).with_name("model_final.pkl.part")
    assert part.read_bytes() == PAYLOAD[: part.stat().st_size] and part.stat().st_size == 400_000
    assert not (gnconvert_env / rel).exists()
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    assert detectron_server.requests_for(rel)[-1].range == "bytes=400000-"


def test_resume_of_a_partial_part_file(gnconvert_env, detectron_server, published):
    rel = published["model"]
    part = (gnconvert_env / rel).with_name("model_final.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:2_000_000])
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    (req,) = detectron_server.requests_for(rel)
    assert req.range == "bytes=2000000-" and req.status == 206
    assert req.body_bytes == len(PAYLOAD) - 2_000_000
    assert not part.exists()


def test_stale_part_file_is_discarded_after_md5_mismatch(gnconvert_env, detectron_server, published):
    rel = published["model"]
    part = (gnconvert_env / rel).with_name("model_final.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # not a prefix of the real file
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    assert [r.range for r in detectron_server.requests_for(rel)] == ["bytes=1000-", None]


def test_range_ignored_by_the_server(gnconvert_env, detectron_server, published):
    rel = published["model"]
    part = (gnconvert_env / rel).with_name("model_final.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1_000_000])
    detectron_server.fail(rel, "ignore_range")
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    (req,) = detectron_server.requests_for(rel)
    assert req.range == "bytes=1000000-" and req.status == 200 and req.body_bytes == len(PAYLOAD)


def test_part_longer_than_the_file_restarts(gnconvert_env, detectron_server, published):
    rel = published["model"]
    part = (gnconvert_env / rel).with_name("model_final.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD + b"junk")
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD
    assert [r.status for r in detectron_server.requests_for(rel)] == [416, 200]


def test_no_content_length(gnconvert_env, detectron_server, published):
    detectron_server.fail(published["model"], "no_length")
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD


def test_close_delimited_body_cut_short_is_caught_by_md5(gnconvert_env, detectron_server, published):
    # without Content-Length an early close looks like the end of the file; only the MD5 can tell
    detectron_server.fail(published["model"], "no_length", after=1_000_000)
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download.fetch(MODEL_ID)
    assert finals(gnconvert_env) == [] and not list(gnconvert_env.rglob("*.part"))


# --- faults: content -----------------------------------------------------------

def test_wrong_md5_leaves_nothing(gnconvert_env, detectron_server):
    rel = "ImageNetPretrained/47592356/R-101-GN.pkl"
    detectron_server.publish(rel, PAYLOAD, md5="0" * 32)
    with pytest.raises(DownloadError, match="MD5 mismatch") as info:
        download.fetch("47592356")
    assert "0" * 32 in str(info.value) and hashlib.md5(PAYLOAD).hexdigest() in str(info.value)
    assert finals(gnconvert_env) == [] and not list(gnconvert_env.rglob("*.part"))


def test_body_corrupted_in_transit_is_rejected(gnconvert_env, detectron_server, published):
    detectron_server.fail(published["model"], "corrupt", at=777)
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download.fetch(MODEL_ID)
    assert finals(gnconvert_env) == [] and not list(gnconvert_env.rglob("*.part"))
    assert download.fetch(MODEL_ID)["model"].read_bytes() == PAYLOAD  # next run is fine


def test_html_page_instead_of_the_file(gnconvert_env, detectron_server, published):
    detectron_server.fail(published["model"], "html")
    with pytest.raises(DownloadError, match="HTML page instead of"):
        download.fetch(MODEL_ID)
    assert finals(gnconvert_env) == [] and not list(gnconvert_env.rglob("*.part"))


def test_html_page_instead_of_the_md5(gnconvert_env, detectron_server, published):
    detectron_server.fail(published["model"] + ".md5sum", "html")
    with pytest.raises(DownloadError, match="HTML page instead of the MD5"):
        download.fetch(MODEL_ID)
    assert detectron_server.requests_for(published["model"]) == []


@pytest.mark.parametrize("code", [404, 403])
def test_missing_or_forbidden_file(gnconvert_env, detectron_server, published, code):
    rel = published["model"]
    detectron_server.fail(rel, "status", code=code)
    with pytest.raises(DownloadError, match=f"HTTP {code}"):
        download.fetch(MODEL_ID)
    assert len(detectron_server.requests_for(rel)) == 1  # not retried
    assert finals(gnconvert_env) == []


def test_file_absent_from_server(gnconvert_env, detectron_server):
    with pytest.raises(DownloadError, match="HTTP 404.*GNCONVERT_BASE_URL"):
        download.fetch("48734779")


# --- bad requests --------------------------------------------------------------

def test_unknown_id_and_unpublished_model(gnconvert_env, detectron_server):
    with pytest.raises(UsageError, match="did you mean 48616381"):
        download.fetch("48616318")
    with pytest.raises(NoDownloadError, match="41.0"):
        download.fetch("56421911")
    with pytest.raises(UsageError, match="--what"):
        download.fetch(MODEL_ID, what="weights")
    assert detectron_server.log == []


# --- the file system -----------------------------------------------------------

def test_cache_folder_that_cannot_exist(gnconvert_env, detectron_server, published, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GNCONVERT_CACHE", str(blocker / "cache"))
    with pytest.raises(DownloadError, match="cannot create the cache folder.*GNCONVERT_CACHE"):
        download.fetch(MODEL_ID)
    assert detectron_server.log == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_cache_folder(gnconvert_env, detectron_server, published):
    gnconvert_env.mkdir()
    gnconvert_env.chmod(0o500)
    try:
        with pytest.raises(DownloadError, match="GNCONVERT_CACHE"):
            download.fetch(MODEL_ID)
    finally:
        gnconvert_env.chmod(0o700)


def _run_python(code: str, env_extra: dict, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


def test_disk_full_leaves_nothing(gnconvert_env, detectron_server, published):
    # RLIMIT_FSIZE makes the kernel refuse writes past 1 MiB (EFBIG), a real failed write()
    code = """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
        from gnconvert.cli import main
        main(["fetch", "48616381"])
    """
    out = _run_python(code, {})
    assert out.returncode == 1
    err = out.stderr.strip()
    assert err.startswith("gnconvert: error: ran out of space") and "\n" not in err, err
    assert finals(gnconvert_env) == [] and not list(gnconvert_env.rglob("*.part"))


def test_two_processes_fetching_the_same_id(gnconvert_env, detectron_server, published):
    rel = published["model"]
    detectron_server.fail(rel, "throttle", times=2, chunk=256 * 1024, delay=0.15)  # ~2 s per transfer
    procs = [subprocess.Popen([sys.executable, "-m", "gnconvert", "fetch", MODEL_ID],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    path = gnconvert_env / rel
    assert [o[0].strip() for o in outs] == [str(path), str(path)]
    assert path.read_bytes() == PAYLOAD
    assert len(detectron_server.requests_for(rel)) == 1  # the second waited and reused the result
    assert any("waiting for another" in o[1] for o in outs)


# --- the command line ------------------------------------------------------------

def test_cli_success_prints_paths(gnconvert_env, published):
    out = subprocess.run([sys.executable, "-m", "gnconvert", "fetch", MODEL_ID, "--what", "all"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(gnconvert_env / published[w]) for w in ("model", "boxes", "masks")]
    listing = subprocess.run([sys.executable, "-m", "gnconvert", "list"], capture_output=True, text=True)
    row = next(line for line in listing.stdout.splitlines() if line.startswith(MODEL_ID))
    assert row.split()[-1] == "model,boxes,masks"


@pytest.mark.parametrize("args, code, text", [
    (["fetch", "4861638"], 2, "unknown model id '4861638'"),
    (["fetch", "49025460"], 2, "no published download"),
    (["fetch", "48734751"], 1, "HTTP 404"),
])
def test_cli_errors_are_one_line(gnconvert_env, published, args, code, text):
    out = subprocess.run([sys.executable, "-m", "gnconvert", *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == code
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gnconvert: error: ") and text in lines[0], out.stderr
    assert out.stdout == ""
