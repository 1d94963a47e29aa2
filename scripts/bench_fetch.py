#!/usr/bin/env python
"""Benchmark `gnconvert fetch` against curl on the same loopback server, in the same run.

A random file (default 300 MB) is published with its .md5sum by the test
server in tests/detectron_server.py (sendfile, so the server is not the
bottleneck) at a catalog model's path.  Each round fetches it with
`curl -s -o`, with `curl` followed by `md5sum` (what gnconvert does: download
and verify), and with `python -m gnconvert fetch` into a fresh cache.  Times
are wall clock of the whole process, startup included; gnconvert's peak RSS
comes from wait4() on its own process.  Targets: time <= 1.25x curl, peak RSS
independent of file size and < 200 MB.

    python scripts/bench_fetch.py [--size-mb 300] [--rounds 3] [--rate-mb-s 0]

On loopback curl moves ~1 GB/s, faster than MD5 can hash (~0.8 GB/s on one
core), so bare curl is a floor gnconvert cannot reach while verifying; the
`curl+md5sum` line is the like-for-like reference, and `--rate-mb-s 100`
shows a realistic link, where hashing hides behind the transfer.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchlib import machine_line, medians, run_timed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from detectron_server import serve_folder  # noqa: E402

from gnconvert.zoo import catalog  # noqa: E402

MODEL_ID = "48616381"


def write_random_file(path: Path, size: int) -> str:
    """Random bytes written in 4 MiB pieces (constant memory); returns the MD5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            f.write(block)
            md5.update(block)
            left -= len(block)
    return md5.hexdigest()


def gnconvert_fetch(base_url: str, cache: Path, env_extra=None):
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, GNCONVERT_BASE_URL=base_url, GNCONVERT_CACHE=str(cache), **(env_extra or {}))
    env.pop("GNCONVERT_OFFLINE", None)
    return run_timed([sys.executable, "-m", "gnconvert", "fetch", MODEL_ID], env)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=300.0, help="size of the served file (MB, 10^6 bytes)")
    ap.add_argument("--small-mb", type=float, default=10.0, help="a second, small size for the RSS comparison")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--rate-mb-s", type=float, default=0.0,
                    help="throttle the server to about this rate (MB/s) to mimic a real link; 0 = unthrottled")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the server folder and caches")
    args = ap.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is not on PATH")
    print(machine_line())  # torch stays unimported: wait4's peak RSS of a child counts this process's own

    rel = catalog.get(MODEL_ID).file("model")
    work = Path(tempfile.mkdtemp(prefix="bench_fetch_", dir=args.workdir))
    try:
        size = int(args.size_mb * 1e6)
        served = work / "server" / rel.replace("%3A", ":")  # the server percent-decodes URL paths
        digest = write_random_file(served, size)
        served.with_name(served.name + ".md5sum").write_text(digest + "\n")
        small_rel = catalog.get("47261647").file("model")
        small = work / "server" / small_rel
        small.with_name(small.name + ".md5sum").write_text(
            write_random_file(small, int(args.small_mb * 1e6)) + "\n")

        with serve_folder(work / "server") as server:
            url = server.url(rel)
            if args.rate_mb_s > 0:  # every request of the big file: 1 MiB pieces, paced
                server.fail(rel, "throttle", times=3 * args.rounds, chunk=1 << 20,
                            delay=(1 << 20) / (args.rate_mb_s * 1e6))
            curl_out = work / "curl.out"
            times = {"curl": [], "curl+md5sum": [], "gnconvert": []}
            rss = []
            for _ in range(args.rounds):
                curl_out.unlink(missing_ok=True)
                times["curl"].append(run_timed(["curl", "-s", "-f", "-o", str(curl_out), url])[0])
                curl_out.unlink()
                t, _ = run_timed(["curl", "-s", "-f", "-o", str(curl_out), url])
                t_md5, _ = run_timed(["md5sum", str(curl_out)])
                times["curl+md5sum"].append(t + t_md5)
                curl_out.unlink()
                t, peak = gnconvert_fetch(server.base_url, work / "cache")
                times["gnconvert"].append(t)
                rss.append(peak)
            fetched = work / "cache" / rel
            assert fetched.stat().st_size == size, "gnconvert's file has the wrong size"
            # the same fetch of a small file: peak RSS must not grow with the file
            env = dict(os.environ, GNCONVERT_BASE_URL=server.base_url, GNCONVERT_CACHE=str(work / "cache2"))
            _, small_rss = run_timed([sys.executable, "-m", "gnconvert", "fetch", "47261647"], env)

        med = medians(times)
        how = f"throttled to ~{args.rate_mb_s:g} MB/s" if args.rate_mb_s > 0 else "http.server + sendfile"
        print(f"file: {size / 1e6:.0f} MB over loopback ({how}), {args.rounds} rounds, medians")
        for k, v in med.items():
            print(f"  {k:<12} {v:7.3f} s  ({size / 1e6 / v:7.0f} MB/s)   all: "
                  + " ".join(f"{x:.3f}" for x in times[k]))
        print(f"ratio gnconvert / curl          = {med['gnconvert'] / med['curl']:.2f}  (target <= 1.25)")
        print(f"ratio gnconvert / curl+md5sum   = {med['gnconvert'] / med['curl+md5sum']:.2f}")
        print(f"gnconvert peak RSS: {max(rss):.0f} MiB for {size / 1e6:.0f} MB, "
              f"{small_rss:.0f} MiB for {args.small_mb:.0f} MB  (target: < 200 MiB, independent of size)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
