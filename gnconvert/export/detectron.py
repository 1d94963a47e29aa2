"""`--to detectron`: back to a weights `.pkl` that Detectron itself loads.

Python-2 cPickle protocol 2, `{'cfg': <original cfg text>, 'blobs': {name: float32 array}}`
with Detectron's blob names and shapes (the inverse of the conversion table in
`gnconvert.name_mapping`).  Only the model's parameters are written: optimizer
momentum, counters and preserved ImageNet blobs were dropped at conversion and
Detectron does not need them to test.  Round trip .pkl -> convert -> export is
bit-exact for every parameter blob.
"""
from __future__ import annotations

from typing import List, Optional

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.export.common import BUNDLED_IMAGE
from gnconvert.export.self_check import VerifyReport, image_name
from gnconvert.export.weights_check import check_weights, run_loaded
from gnconvert.results.detections import Detections


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    from gnconvert.checkpoint.name_mapping import torch_to_detectron
    from gnconvert.checkpoint.py2_pickle import write_detectron_pickle

    write_detectron_pickle(paths[0], torch_to_detectron(ckpt.state_dict, ckpt.arch), ckpt.cfg_text)


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None,
           reference: Optional[Detections] = None, image=BUNDLED_IMAGE) -> VerifyReport:
    """Read the pickle back as Detectron's files are read, map it, compare, run it."""
    from gnconvert.checkpoint.name_mapping import detectron_to_torch, mapping_rules
    from gnconvert.checkpoint.pickle_reader import read_detectron_pickle

    report = VerifyReport("detectron", paths[0], f"{image_name(image)} (weights + whole pipeline)")
    pickle = read_detectron_pickle(paths[0])
    if pickle.cfg_text != ckpt.cfg_text:
        report.problems.append("the cfg text read back differs from the checkpoint's")
    expected = {r.blob: r.shape for r in mapping_rules(ckpt.arch)}
    got = {name: tuple(value.shape) for name, value in pickle.blobs.items()}
    if got != expected:
        report.problems.append("blob names or shapes differ from Detectron's for this architecture")
        return report
    loaded = detectron_to_torch(pickle.blobs, ckpt.arch).state_dict
    check_weights(report, ckpt, loaded)
    run_loaded(report, ckpt.arch, loaded, ckpt, network, reference, image)
    return report
