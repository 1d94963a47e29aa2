"""The timing and memory helpers every scripts/bench_*.py shares.

One copy, so that all the benchmarks synchronise CUDA, alternate what they compare,
read peak RSS and describe the machine the same way.  The scripts run as
`python scripts/bench_x.py`, which puts scripts/ first on sys.path: `import benchlib`.

This module imports neither torch nor triton itself: a script whose children are
measured (bench_fetch's peak RSS comes from wait4, which Linux charges with the
caller's own peak at launch) must stay small, so torch is only looked at when the
script has already imported it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Hashable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, Union

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Device = Union[str, "torch.device", None]  # None and "cpu" need no synchronising

# the golden images Detectron ran the seeded R-50-FPN GN checkpoint on, each of its own size
GOLDEN_IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]


def golden_dir() -> Path:
    """$GNCONVERT_SHARED/golden (the GPU bundle sets it), else ../shared/golden beside the repository."""
    return Path(os.environ.get("GNCONVERT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "golden"


# ----------------------------------------------------------------------------- the machine
def _version(package: str) -> str | None:
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """Python, torch and triton versions, torch's thread count, the CPU, the CUDA device.

    threads and gpu are None unless torch is already imported (see the module docstring)."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": _version("torch"),
                            "triton": _version("triton"), "threads": None, "cpu": cpu_model(),
                            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                            "gpu": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["threads"] = torch.get_num_threads()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # what ATen (and inductor) vectorise with
        info["onednn_isa_cap"] = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        from gnconvert.runtime import cpu as cpu_support

        info["bf16_instructions"] = cpu_support.bf16_instructions()[1]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line() -> str:
    """machine() as the one line a benchmark prints first."""
    m = machine()
    n = m["threads"]
    threads = "not imported here" if n is None else f"{n} thread{'' if n == 1 else 's'}"
    isa = ""
    if m.get("cpu_capability"):
        cap = f", oneDNN capped at {m['onednn_isa_cap']}" if m["onednn_isa_cap"] else ""
        isa = f" [ATen {m['cpu_capability']}{cap}; bf16: {m['bf16_instructions']}]"
    return (f"machine: python {m['python']}, torch {m['torch'] or 'absent'} ({threads}), "
            f"triton {m['triton'] or 'absent'}, CPU {m['cpu']} ({m['cpus']} available){isa}, GPU {m['gpu'] or 'none'}")


# ----------------------------------------------------------------------------- timing
def sync(device: Device) -> None:
    """Wait for the device's queued work: torch.cuda.synchronize on a CUDA device (str or torch.device), else nothing."""
    if device is not None and str(device).split(":")[0] == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Device = "cpu") -> tuple[T, float, float]:
    """fn()'s result, wall seconds and CPU (process) seconds, the device synchronised before and after."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


class Runs(NamedTuple):
    """What interleaved() measured, per key: wall and CPU seconds of every timed call, and the last result."""

    wall: dict[Any, list[float]]
    cpu: dict[Any, list[float]]
    last: dict[Any, Any]


def interleaved(fns: Mapping[K, Callable[[], Any]], rounds: int, device: Device = "cpu", warmup: int = 1) -> Runs:
    """Time each fn once per round, alternating A B A B ... so that load from other processes
    on the machine hits all alike; `warmup` untimed rounds first.  Only the last result is kept."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs = Runs({k: [] for k in fns}, {k: [] for k in fns}, {})
    for _ in range(rounds):
        for k, fn in fns.items():
            runs.last[k] = None  # let the previous result go before the next call
            runs.last[k], wall, cpu = timed(fn, device)
            runs.wall[k].append(wall)
            runs.cpu[k].append(cpu)
    return runs


def medians(times: Mapping[K, Sequence[float]]) -> dict[K, float]:
    """The median of each list."""
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- memory and processes
def high_water_mb() -> float:
    """This process's peak RSS in MiB: VmHWM, which exec resets, unlike ru_maxrss (Linux carries
    that over fork + exec, so a child would report at least its parent's size); ru_maxrss where
    /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child_main(results: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        results.put((True, fn(*args)))
    except BaseException:  # the parent raises it, with this traceback
        results.put((False, traceback.format_exc()))


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) run in a fresh interpreter (multiprocessing's spawn), its result sent back through a Queue.

    fn and args must pickle: fn lives at a module's top level (a script's own functions do, under
    its `if __name__ == "__main__":` guard).  An exception in the child is raised here as RuntimeError."""
    name = getattr(fn, "__name__", repr(fn))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child_main, args=(results, fn, args))
    proc.start()
    try:
        while True:
            try:
                ok, value = results.get(timeout=1.0)
                break
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:  # it may have put its result just before it exited
                    ok, value = results.get(timeout=5.0)
                    break
                except queue.Empty:
                    raise RuntimeError(f"{name} died in its child process (exit code {proc.exitcode})") from None
    finally:
        proc.join()
    if not ok:
        raise RuntimeError(f"{name} failed in its child process:\n{value}")
    return value


def _then_high_water(target: Callable[..., Any], args: tuple) -> float:
    target(*args)
    return high_water_mb()


def peak_rss_mb_in_child(target: Callable[..., Any], *args: Any) -> float:
    """Peak RSS (MiB) of a fresh interpreter that runs target(*args) and nothing else."""
    return in_child(_then_high_water, target, args)


def run_timed(cmd: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, stdout discarded; exits with its stderr if it fails.

    The peak comes from wait4 on that child only, but Linux counts the caller's own peak at the launch
    (vfork + exec) into it: it is the command's own only while the caller is the smaller of the two."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child cannot block on a full pipe
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{err.read().decode(errors='replace')[-4000:]}")
    return seconds, usage.ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- the model
def seeded_checkpoint(arch_name: str = "e2e_mask_rcnn_R-50-FPN_2x_gn", seed: int = 1) -> Any:
    """A converted checkpoint with the golden README's seeded weights (gnconvert.fidelity.seeded),
    mapped in memory: the benchmarks' stand-in for a real Detectron checkpoint (same shapes, and
    a full 100 detections with masks per image)."""
    from gnconvert.architecture import REFERENCE_ARCHITECTURES
    from gnconvert.checkpoint.converted import ConvertedCheckpoint
    from gnconvert.checkpoint.name_mapping import detectron_to_torch
    from gnconvert.fidelity.seeded import seeded_blobs

    arch = REFERENCE_ARCHITECTURES[arch_name]
    return ConvertedCheckpoint(state_dict=detectron_to_torch(seeded_blobs(arch, seed), arch).state_dict, arch=arch)
