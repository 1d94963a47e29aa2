"""`--to aoti`: the exported pipeline compiled by AOTInductor (inductor lite mode), bit for bit the eager `Detector`.

The whole-pipeline package takes minutes to compile, so one is made (by the CLI, whose printed
check is kept) and every test of it shares it; small modules with the pipeline's input contract
compile in seconds and test the package's own checks.  Expectations come from the eager
`Detector` (test_golden_parity proves it against Detectron's detections) and from the input
contract ((H, W, 3) uint8, 32..8192 pixels a side).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import cv2
import pytest
import torch
from test_export_program import GN_IMAGES
from test_export_torchscript import TORCH_ONLY_START, _torch_only_path

from gnconvert.checkpoint.sources import load_source
from gnconvert.export.aoti import compile_package
from gnconvert.export.common import loaded_network
from gnconvert.inference import Detector
from gnconvert.inference.detector import OUTPUTS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "aoti_cpp" / "detect.cpp"


@pytest.fixture(scope="module")
def package(seeded_pickle, tmp_path_factory):
    """(checkpoint, eager Detector, path of the package, the CLI's stdout) for the seeded R-50-FPN GN model."""
    pkl = seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn")
    folder = tmp_path_factory.mktemp("aoti_package")
    proc = subprocess.run([sys.executable, "-m", "gnconvert", "export", str(pkl), "--to", "aoti", "-o", "model_aoti.pt2"],
                          cwd=folder, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_source(str(pkl))
    return ckpt, Detector(loaded_network(ckpt), ckpt.arch).eval(), folder / "model_aoti.pt2", proc.stdout


@pytest.mark.slow
def test_cli_prints_a_bit_for_bit_check_and_writes_only_the_package(package):
    stdout, path = package[3], package[2]
    lines = stdout.splitlines()
    assert lines[0].startswith("wrote model_aoti.pt2 in ")
    assert lines[1].startswith("verify aoti model_aoti.pt2 on chelsea.png, chelsea.png cropped to ")
    assert lines[1].endswith("(whole pipeline, bit for bit): PASS")
    for key in OUTPUTS:
        assert f"  max {key} difference: 0 (allowed 0)" in lines
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_aoti.pt2"]


@pytest.mark.slow
def test_package_is_the_eager_detector_bit_for_bit_on_every_golden_gn_image(package, golden_dir):
    _, eager, path, _ = package
    compiled = torch._inductor.aoti_load_package(str(path))
    sizes = set()
    for name in GN_IMAGES:
        image = torch.from_numpy(cv2.imread(str(golden_dir / "images" / name)))
        sizes.add(tuple(image.shape))
        with torch.no_grad():
            want, got = eager(image), compiled(image)
        for key in OUTPUTS:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, (name, key)
            assert torch.equal(got[key], want[key]), (name, key)
    assert len(sizes) == len(GN_IMAGES)  # one package, every size


@pytest.mark.slow
@pytest.mark.parametrize("image,got", [
    (torch.zeros((64, 80, 3), dtype=torch.float32), "float32"),
    (torch.zeros((64, 80), dtype=torch.uint8), "2 dimensions"),
    (torch.zeros((64, 80, 4), dtype=torch.uint8), "size 4 in dimension 2"),
    (torch.zeros((8, 80, 3), dtype=torch.uint8), "size 8 in dimension 0"),
])
def test_bad_input_to_the_package_is_one_line_naming_the_image(package, image, got):
    compiled = torch._inductor.aoti_load_package(str(package[2]))
    with pytest.raises(RuntimeError) as info:
        compiled(image)
    assert str(info.value).strip() == f"image: expected a uint8 tensor of shape (32..8192, 32..8192, 3) on cpu, got {got}"


@pytest.mark.slow
def test_a_package_that_differs_is_refused_and_nothing_is_written(package, seeded_pickle, tmp_path, monkeypatch):
    """A real mismatch: the seed-1 package offered as the export of the seed-2 checkpoint."""
    from gnconvert.errors import ParityError
    from gnconvert.export import aoti, export

    other = load_source(str(seeded_pickle("e2e_mask_rcnn_R-50-FPN_2x_gn", seed=2)))
    monkeypatch.setattr(aoti, "write", lambda ckpt, paths, *args, **kwargs: shutil.copyfile(package[2], paths[0]))
    with pytest.raises(ParityError, match="does not reproduce the model, so nothing was written"):
        export(other, "aoti", tmp_path / "model_aoti.pt2")
    assert list(tmp_path.iterdir()) == []


CHILD = TORCH_ONLY_START + textwrap.dedent("""
    model = torch._inductor.aoti_load_package(sys.argv[2])
    images = torch.load(sys.argv[3])
    torch.save({name: model(image) for name, image in images.items()}, sys.argv[4])
""")


@pytest.mark.slow
def test_package_runs_two_sizes_in_a_torch_only_interpreter(package, golden_dir, tmp_path):
    _, eager, path, _ = package
    images = {name: torch.from_numpy(cv2.imread(str(golden_dir / "images" / name)))
              for name in ("tiny_chelsea.png", "wide_synthetic.png")}
    torch.save(images, tmp_path / "images.pt")
    site = _torch_only_path(tmp_path / "torch_only")
    proc = subprocess.run([sys.executable, "-S", "-E", "-s", "-c", CHILD, str(site), str(path),
                           str(tmp_path / "images.pt"), str(tmp_path / "outputs.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    for name, image in images.items():
        with torch.no_grad():
            want = eager(image)
        assert all(torch.equal(outputs[name][k], want[k]) for k in OUTPUTS), name


def _cpp_build_or_skip(tmp_path) -> Path:
    """examples/aoti_cpp/detect.cpp built as its header says, against this torch wheel."""
    torch_dir = Path(torch.__file__).parent
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++) on PATH")
    if not (torch_dir / "include" / "torch" / "csrc" / "inductor" / "aoti_package" / "model_package_loader.h").is_file():
        pytest.skip("this torch wheel ships no AOTIModelPackageLoader header")
    binary = tmp_path / "detect"
    subprocess.run([compiler, "-std=c++20", "-O1", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
                    str(EXAMPLE), "-o", str(binary), "-I", str(torch_dir / "include"),
                    "-I", str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"), "-L", str(torch_dir / "lib"),
                    f"-Wl,-rpath,{torch_dir / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10", "-ldl"],
                   check=True, capture_output=True, timeout=600)
    return binary


@pytest.mark.slow
def test_cpp_example_loads_the_package_and_prints_the_eager_detections(package, golden_dir, tmp_path):
    import torchvision

    binary = _cpp_build_or_skip(tmp_path)
    _, eager, path, _ = package
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("LDLIBRARY")
    ops = sorted(Path(torchvision.__file__).parent.glob("_C*.so"))
    if not libpython.is_file() or not ops:
        pytest.skip("no shared libpython or torchvision operator library to load into the C++ program")
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(torch.__file__).parent / "lib"))
    for name in ("tiny_chelsea.png", "chelsea.png"):
        image = cv2.imread(str(golden_dir / "images" / name))
        image.tofile(tmp_path / "image.bgr")
        proc = subprocess.run([str(binary), str(path), str(tmp_path / "image.bgr"), str(image.shape[0]), str(image.shape[1]),
                               str(libpython), str(ops[0])], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [line.split() for line in proc.stdout.splitlines()]
        with torch.no_grad():
            want = eager(torch.from_numpy(image))
        assert len(rows) == want["scores"].shape[0] > 0, name
        assert torch.equal(torch.tensor([int(r[0]) for r in rows]), want["classes"].to(torch.int64)), name
        assert torch.equal(torch.tensor([float(r[1]) for r in rows], dtype=torch.float32), want["scores"]), name
        assert torch.equal(torch.tensor([[float(v) for v in r[2:]] for r in rows], dtype=torch.float32), want["boxes"]), name


def _toy_package(tmp_path, forward, extra_files=None):
    """A small module with the pipeline's input contract ((H, W, 3) uint8, H and W dynamic)
    compiled through compile_package into a file opened for writing, as `--to aoti` writes."""
    class Toy(torch.nn.Module):
        def forward(self, image):
            return forward(image)

    dims = ({0: torch.export.Dim("height", min=32, max=8192), 1: torch.export.Dim("width", min=32, max=8192)},)
    program = torch.export.export(Toy(), (torch.zeros((64, 80, 3), dtype=torch.uint8),), dynamic_shapes=dims, strict=False)
    path = tmp_path / "toy.pt2.tmp"  # not a .pt2 name: the temporary file the exporter renames
    with open(path, "wb") as f:
        compile_package(program, f, extra_files)
    return path


def test_package_checks_the_image_and_names_what_is_wrong_in_one_line(tmp_path):
    from torch.export.pt2_archive._package import load_pt2

    path = _toy_package(tmp_path, lambda im: torch.nn.functional.avg_pool2d(im.permute(2, 0, 1).float()[None], 2),
                        {"README.txt": "how to load it"})
    package = torch._inductor.aoti_load_package(str(path))
    good = torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8)
    assert torch.equal(package(good), torch.nn.functional.avg_pool2d(good.permute(2, 0, 1).float()[None], 2))
    want = "image: expected a uint8 tensor of shape (32..8192, 32..8192, 3) on cpu, got "
    for bad, got in [(torch.zeros((64, 80, 3)), "float32"), (torch.zeros((64, 80), dtype=torch.uint8), "2 dimensions"),
                     (torch.zeros((64, 80, 4), dtype=torch.uint8), "size 4 in dimension 2"),
                     (torch.zeros((16, 80, 3), dtype=torch.uint8), "size 16 in dimension 0")]:
        with pytest.raises(RuntimeError) as e:
            package(bad)
        assert str(e.value).strip() == want + got
    assert load_pt2(str(path)).extra_files == {"README.txt": "how to load it"}


def test_package_checks_every_aten_call_dtype_without_the_environment_switch(tmp_path, monkeypatch):
    """torch 2.14 runs an integer `pow(2, n)` through a C shim that returns float32; the
    package's output checks (on by default here) stop it instead of reading floats as int64."""
    monkeypatch.delenv("AOTI_RUNTIME_CHECK_INPUTS", raising=False)
    path = _toy_package(tmp_path, lambda im: torch.pow(2, torch.arange(im.shape[0], dtype=torch.int64)))
    package = torch._inductor.aoti_load_package(str(path))
    try:
        got = package(torch.zeros((40, 50, 3), dtype=torch.uint8))
    except RuntimeError as e:  # this torch's shim: stopped, naming the op
        assert "aten.pow.Scalar" in str(e) and "dtype" in str(e)
    else:  # a torch whose shim keeps the integer dtype
        assert got.dtype == torch.int64 and torch.equal(got, 2 ** torch.arange(40))
