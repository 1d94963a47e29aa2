"""`gnconvert selftest`: prove, offline, that conversion + inference reproduce Detectron.

It walks the same path a user's download takes: a seeded stand-in for a GN Mask
R-CNN checkpoint is written in Detectron's exact Python-2 pickle format (with
the cfg text Detectron embeds), read back by the safe reader, converted,
saved and re-loaded as `.safetensors`, run on a bundled image, and compared
with Detectron's own outputs for that very checkpoint and image.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

if TYPE_CHECKING:
    from gnconvert.fidelity.mode_fidelity import ModeFidelity
    from gnconvert.fidelity.parity import ParityReport
    from gnconvert.runtime import Runtime

BUNDLE = Path(__file__).resolve().parents[1] / "data" / "selftest"
TAG = "R-50-FPN-GN_seed1"
IMAGE = "chelsea.png"
CFG = "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"
SEED = 1


@dataclass
class SelftestResult:
    report: ParityReport
    steps: Dict[str, float] = field(default_factory=dict)  # step -> seconds
    facts: List[str] = field(default_factory=list)
    fast: Optional[ModeFidelity] = None  # the asked-for fast mode's measured fidelity

    @property
    def passed(self) -> bool:
        return bool(self.report.passed)

    def format(self) -> str:
        lines = ["gnconvert selftest: seeded R-50-FPN GN checkpoint vs Detectron's own outputs"]
        lines += [f"  {f}" for f in self.facts]
        lines.append("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.steps.items()))
        lines.append(self.report.format())
        if self.fast is not None:
            lines.append(f"fast mode (informational; the verdict is the exact mode's): {self.fast.format()}")
            lines.append(f"  time on {IMAGE}: {self.fast.images[0].seconds:.2f}s in {self.fast.mode} "
                         f"(first call, compilation included if compiled) vs "
                         f"{self.report.timings.get('predict', float('nan')):.2f}s exact")
        lines.append("selftest PASSED" if self.passed else "selftest FAILED: the converted model does not reproduce Detectron")
        return "\n".join(lines)


def run(runtime: Optional[Runtime] = None, workdir: Optional[str] = None, log: Callable[[str], None] = lambda s: None,
        bundle: Path = BUNDLE) -> SelftestResult:
    """Build, convert, run and compare; returns the result (never raises on a parity mismatch).

    The verdict is the exact mode's, on the runtime's device (default: the CPU).  With a fast mode
    in `runtime`, the same converted model also runs in that mode and its fidelity to Detectron's
    outputs is measured (`mode_fidelity`)."""
    import dataclasses

    from gnconvert.api import build_model
    from gnconvert.architecture import architecture_from_cfg
    from gnconvert.atomic import output_error
    from gnconvert.checkpoint.converted import save_converted
    from gnconvert.checkpoint.detectron_cfg import parse_detectron_cfg
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle
    from gnconvert.checkpoint.sources import load_source
    from gnconvert.errors import UsageError
    from gnconvert.fidelity import golden_format, parity, seeded
    from gnconvert.runtime import EXACT, Runtime

    runtime = runtime or Runtime.resolve("cpu")
    exact = dataclasses.replace(runtime, mode=EXACT, warnings=())
    if workdir is not None:
        if not os.path.isdir(workdir):
            raise UsageError(f"--workdir {workdir} is not an existing folder; create it or leave --workdir out")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise UsageError(f"--workdir {workdir} is not writable; choose a writable folder (it needs ~400 MB)")
    steps: Dict[str, float] = {}
    facts: List[str] = []

    @contextlib.contextmanager
    def step(name):
        t = time.perf_counter()
        log(f"  {name} ...")
        yield
        steps[name] = time.perf_counter() - t

    cfg_text = (bundle / CFG).read_text()
    with tempfile.TemporaryDirectory(prefix="gnconvert-selftest-", dir=workdir) as tmp:
        with step("build seeded Python-2 checkpoint"):
            arch = architecture_from_cfg(parse_detectron_cfg(cfg_text))
            blobs = seeded.seeded_blobs(arch, SEED)
            pkl = os.path.join(tmp, "model_final.pkl")
            try:
                write_detectron_pickle(pkl, blobs, cfg_text=cfg_text)
            except OSError as e:
                raise output_error(pkl, e) from None
            facts.append(f"checkpoint: {len(blobs)} blobs, {os.path.getsize(pkl) / 1e6:.0f} MB Python-2 pickle "
                         f"(seed {SEED}, sha256 {seeded.blobs_checksum(blobs)[:16]})")
            del blobs

        with step("read + convert"):
            ckpt = load_source(pkl)
            st = os.path.join(tmp, "model.safetensors")
            save_converted(st, ckpt.state_dict, ckpt.arch, ckpt.provenance, ckpt.dropped, ckpt.cfg_text)
            facts.append(f"converted: {len(ckpt.state_dict)} parameters ({ckpt.num_parameters / 1e6:.1f} M values), "
                         f"{len(ckpt.dropped)} blobs dropped with reasons; architecture from {ckpt.provenance.get('architecture_from')}")
            del ckpt

        with step("load converted .safetensors"):
            converted = load_source(st)
            model = build_model(converted, runtime=exact)
            facts.append(f"GroupNorm: {exact.group_norm}")

    with step(f"predict {IMAGE} on {exact.device}"):
        reference = golden_format.load(bundle, TAG, IMAGE)
        report = parity.check_image(model, reference, str(bundle / "images" / IMAGE))
    fast = None
    if not runtime.mode.exact:
        from gnconvert.fidelity import mode_fidelity

        del model
        with step(f"predict {IMAGE} in {runtime.mode.name} on {runtime.device}"):
            fast = mode_fidelity.measure(build_model(converted, runtime=runtime), bundle, TAG, [IMAGE])
    return SelftestResult(report=report, steps=steps, facts=facts, fast=fast)
