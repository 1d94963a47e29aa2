"""`--to safetensors`: the weights under our parameter names with a JSON metadata header.

This is gnconvert's converted-checkpoint format (`gnconvert.converted`): readable
with the `safetensors` package alone.  `safe_open(path, "numpy").metadata()`
holds `format` and `gnconvert`, a JSON document with the architecture (test
settings under "test"), provenance, the dropped blobs and Detectron's cfg text.
"""
from __future__ import annotations

import json
from typing import List, Optional

from gnconvert.architecture import Architecture
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.export.common import BUNDLED_IMAGE, write_file
from gnconvert.export.self_check import VerifyReport, image_name
from gnconvert.export.weights_check import check_weights, run_loaded
from gnconvert.results.detections import Detections


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    from gnconvert import __version__
    from gnconvert.checkpoint.converted import serialize_converted

    provenance = {**ckpt.provenance, "exported_by": f"gnconvert {__version__}"}
    write_file(paths[0], serialize_converted(ckpt.state_dict, ckpt.arch, provenance, ckpt.dropped, ckpt.cfg_text))


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None,
           reference: Optional[Detections] = None, image=BUNDLED_IMAGE) -> VerifyReport:
    """Read the file back with `safetensors` alone (not gnconvert's loader) and run it."""
    from safetensors import safe_open

    report = VerifyReport("safetensors", paths[0], f"{image_name(image)} (weights + whole pipeline)")
    with safe_open(paths[0], framework="numpy") as f:
        record = json.loads((f.metadata() or {}).get("gnconvert", "null") or "null")
        loaded = {name: f.get_tensor(name) for name in f.keys()}
    if not isinstance(record, dict) or "architecture" not in record:
        report.problems.append("metadata header has no gnconvert architecture record")
        return report
    arch = Architecture.from_dict(record["architecture"])
    if arch != ckpt.arch:
        report.problems.append("the architecture record read back differs from the checkpoint's")
    if record.get("cfg_text") != ckpt.cfg_text:
        report.problems.append("the cfg text read back differs from the checkpoint's")
    check_weights(report, ckpt, loaded)
    run_loaded(report, arch, loaded, ckpt, network, reference, image)
    return report
