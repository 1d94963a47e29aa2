"""gnconvert.export.aoti: AOTInductor in lite mode compiles the exported proposal stage exactly.

The whole program takes minutes to compile (scripts/bench_aoti.py measures that package); this
test compiles RPN candidate selection for all five FPN levels (sigmoid, numpy-order top-k in
while_loops, anchors, box decoding, clipping, the size filter: the steps a normal inductor
compile got wrong by ulps) and expects the eager functions' outputs bit for bit.  The package
sometimes stops instead (README, Deploy); that RuntimeError is the one tolerated failure.
"""
from __future__ import annotations

import cv2
import pytest
import torch

from gnconvert.checkpoint.sources import load_source
from gnconvert.export.aoti import compile_package
from gnconvert.export.common import loaded_network
from gnconvert.inference import Detector, proposals


@pytest.mark.xfail(raises=RuntimeError, strict=False,
                   reason="known defect: the compiled sort loops now and then stop with 'numpy fallback ... not exported' "
                          "on inputs another run handles (a stop, never other outputs); wrong outputs still fail")
def test_lite_mode_package_gives_the_eager_proposal_candidates_bit_for_bit(seeded_pickle, golden_dir, tmp_path):
    ckpt = load_source(str(seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn")))
    det = Detector(loaded_network(ckpt), ckpt.arch).eval()
    image = torch.from_numpy(cv2.imread(str(golden_dir / "images" / "chelsea.png")))
    with torch.no_grad():
        data, im_info, _ = det.input_blob(image)
        _, logits, deltas = det.features(data)
    padded = (data.shape[2], data.shape[3])

    class Candidates(torch.nn.Module):
        def forward(self, *maps):
            out = []
            for i in range(5):
                out += proposals.level_candidates(maps[i], maps[5 + i], det.cell_anchors[i], 1 << (2 + i), maps[10],
                                                  padded, det.pre_nms_top_n, det.rpn_min_size, det.bbox_xform_clip)
            return tuple(out)

    inputs = tuple(x[0] for x in logits) + tuple(x[0] for x in deltas) + (im_info,)
    with torch.no_grad():
        want = Candidates()(*inputs)
        program = torch.export.export(Candidates(), inputs, strict=False)
        got = torch._inductor.aoti_load_package(compile_package(program, str(tmp_path / "candidates.pt2")))(*inputs)
    assert len(got) == len(want) == 10
    for i, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert torch.equal(a, b), i
