"""`--to export`: the whole pipeline as one torch.export program, bit for bit the eager `Detector`.

Expectations come from the eager `Detector` (test_golden_parity proves it against Detectron's
detections).  One program per architecture serves every golden image, whatever its size, and
it runs in an interpreter that can import torch and torchvision only.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import pytest
import torch
from test_export_torchscript import TORCH_ONLY_START, _torch_only_path

from gnconvert.checkpoint.sources import load_source
from gnconvert.errors import ParityError
from gnconvert.export import export, exported_program
from gnconvert.export.common import loaded_network
from gnconvert.inference import Detector
from gnconvert.inference.detector import OUTPUTS

GN_IMAGES = ["grace_hopper.jpg", "astronaut.png", "chelsea.png", "wide_synthetic.png", "tiny_chelsea.png"]
BN_IMAGES = ["grace_hopper.jpg", "chelsea.png", "wide_synthetic.png"]  # the golden R-50-FPN BN* cases


@pytest.fixture(scope="module")
def programs(seeded_pickle, tmp_path_factory):
    """arch -> (checkpoint, network, path of its exported program).  The GN program is made by the
    CLI (whose printed check is kept), the BN* one through the API without the check."""
    made = {}
    gn_pkl = seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn")
    folder = tmp_path_factory.mktemp("gn_program")
    proc = subprocess.run([sys.executable, "-m", "gnconvert", "export", str(gn_pkl), "--to", "export", "-o",
                           "model.pt2"], cwd=folder, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_source(str(gn_pkl))
    made["gn"] = (ckpt, loaded_network(ckpt), folder / "model.pt2", proc.stdout)
    bn_ckpt = load_source(str(seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x")))
    bn_path = tmp_path_factory.mktemp("bn_program") / "model.pt2"
    export(bn_ckpt, "export", bn_path, verify=False)
    made["bn"] = (bn_ckpt, loaded_network(bn_ckpt), bn_path, "")
    return made


def test_cli_prints_a_bit_for_bit_check_and_writes_only_the_program(programs):
    stdout, path = programs["gn"][3], programs["gn"][2]
    lines = stdout.splitlines()
    assert lines[0].startswith("wrote model.pt2 in ")
    assert lines[1].startswith("verify export model.pt2 on chelsea.png, chelsea.png cropped to ")
    assert lines[1].endswith("(whole pipeline, bit for bit): PASS")
    for key in OUTPUTS:
        assert f"  max {key} difference: 0 (allowed 0)" in lines
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt2"]


@pytest.mark.parametrize("arch,images", [("gn", GN_IMAGES), ("bn", BN_IMAGES)])
def test_program_is_the_eager_detector_bit_for_bit_on_every_golden_image(programs, golden_dir, arch, images):
    ckpt, network, path, _ = programs[arch]
    program = torch.export.load(str(path)).module()
    eager = Detector(network, ckpt.arch).eval()
    sizes = set()
    for name in images:
        image = torch.from_numpy(cv2.imread(str(golden_dir / "images" / name)))
        sizes.add(tuple(image.shape))
        want, got = eager(image), program(image)
        assert set(got) == set(OUTPUTS)
        for key in OUTPUTS:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, (name, key)
            assert torch.equal(got[key], want[key]), (name, key)
    assert len(sizes) == len(images)  # one program, every size


def test_program_calls_only_torch_and_torchvision_ops(programs):
    program = torch.export.load(str(programs["gn"][2]))
    ops = exported_program.operators(program)
    assert "torchvision::roi_align" in ops and "higher_order::while_loop" in ops  # RoIAlign; NMS and sorts
    assert {op.split("::")[0] for op in ops} <= {"torchvision", "higher_order"}, ops


CHILD = TORCH_ONLY_START + textwrap.dedent("""
    model = torch.export.load(sys.argv[2]).module()
    images = torch.load(sys.argv[3])
    torch.save({name: model(image) for name, image in images.items()}, sys.argv[4])
""")


def test_program_runs_two_sizes_in_a_torch_only_interpreter(programs, golden_dir, tmp_path):
    ckpt, network, path, _ = programs["gn"]
    images = {name: torch.from_numpy(cv2.imread(str(golden_dir / "images" / name)))
              for name in ("tiny_chelsea.png", "wide_synthetic.png")}
    assert images["tiny_chelsea.png"].shape != images["wide_synthetic.png"].shape
    torch.save(images, tmp_path / "images.pt")
    site = _torch_only_path(tmp_path / "torch_only")
    proc = subprocess.run([sys.executable, "-S", "-E", "-s", "-c", CHILD, str(site), str(path),
                           str(tmp_path / "images.pt"), str(tmp_path / "outputs.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    eager = Detector(network, ckpt.arch).eval()
    for name, image in images.items():
        want = eager(image)
        assert all(torch.equal(outputs[name][k], want[k]) for k in OUTPUTS), name


@pytest.mark.parametrize("image,message", [
    (torch.zeros((64, 80, 3), dtype=torch.float32), "dtype"),
    (torch.zeros((64, 80), dtype=torch.uint8), ""),
    (torch.zeros((64, 80, 4), dtype=torch.uint8), "3"),
    (torch.zeros((8, 80, 3), dtype=torch.uint8), str(exported_program.MIN_SIDE)),
])
def test_bad_input_is_a_one_line_python_error(programs, image, message):
    program = torch.export.load(str(programs["gn"][2])).module()
    with pytest.raises(Exception) as info:  # noqa: B017  (torch's guards raise several kinds)
        program(image)
    text = str(info.value)
    assert len(text.strip().splitlines()) == 1 and "Exception raised from" not in text, text
    assert message in text


def test_a_program_that_differs_is_refused_and_nothing_is_written(programs, tmp_path, monkeypatch):
    """A real mismatch: the BN* program offered as the GN checkpoint's export."""
    gn_ckpt, gn_network = programs["gn"][:2]
    bn_program = torch.export.load(str(programs["bn"][2]))
    monkeypatch.setattr(exported_program, "trace", lambda *args, **kwargs: bn_program)
    with pytest.raises(ParityError, match="does not reproduce the model, so nothing was written"):
        export(gn_ckpt, "export", tmp_path / "model.pt2", network=gn_network)
    assert list(tmp_path.iterdir()) == []
