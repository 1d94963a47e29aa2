"""The safe reader on genuine Python 2 files and the Python 3 protocol-2 form."""
from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from gnconvert.checkpoint.pickle_reader import read_detectron_pickle
from gnconvert.errors import CheckpointError


@pytest.fixture(scope="module")
def expected(golden_dir):
    with np.load(golden_dir / "py2" / "small_expected.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_blobs_equal(blobs, expected):
    assert sorted(blobs) == sorted(expected)
    for name, want in expected.items():
        got = blobs[name]
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name
        assert got.flags.writeable and got.flags.c_contiguous


def test_real_python2_with_cfg(golden_dir, expected):
    ckpt = read_detectron_pickle(golden_dir / "py2" / "small_with_cfg.pkl")
    assert ckpt.layout == "blobs+cfg"
    _assert_blobs_equal(ckpt.blobs, expected)
    assert ckpt.cfg_text.startswith("!!python/object/new:detectron.utils.collections.AttrDict\n")
    # the embedded cfg is the same text Detectron wrote (plain latin-1 load agrees)
    with open(golden_dir / "py2" / "small_with_cfg.pkl", "rb") as f:
        assert ckpt.cfg_text == pickle.load(f, encoding="latin1")["cfg"]


def test_real_python2_bare(golden_dir, expected):
    ckpt = read_detectron_pickle(golden_dir / "py2" / "small_blobs_only.pkl")
    assert ckpt.layout == "bare" and ckpt.cfg_text is None
    _assert_blobs_equal(ckpt.blobs, expected)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("layout", ["blobs+cfg", "bare"])
def test_python3_forms(tmp_path, expected, layout, protocol):
    # protocol 2 is what Detectron wrote; 3-5 are what a re-save under Python 3 gives
    obj = {"blobs": expected, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n"} if layout == "blobs+cfg" else expected
    path = tmp_path / "py3.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    ckpt = read_detectron_pickle(path)
    assert ckpt.layout == layout
    _assert_blobs_equal(ckpt.blobs, expected)
    assert ckpt.cfg_text == (obj["cfg"] if layout == "blobs+cfg" else None)


def test_numpy_scalars_become_zero_d_arrays(tmp_path):
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps({"lr": np.float64(0.02), "iter": np.int64(7)}, protocol=2))
    blobs = read_detectron_pickle(path).blobs
    assert blobs["lr"].shape == () and blobs["lr"].dtype == np.float64 and float(blobs["lr"]) == 0.02
    assert int(blobs["iter"]) == 7


@pytest.mark.parametrize("protocol", [2, 5])
def test_big_endian_and_fortran_arrays(tmp_path, protocol):
    a = np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4))
    path = tmp_path / "be.pkl"
    path.write_bytes(pickle.dumps({"a": a}, protocol=protocol))
    got = read_detectron_pickle(path).blobs["a"]
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert got.flags.writeable


@pytest.mark.parametrize("content,what", [
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
    (b"", "empty"),
    (b"\x93NUMPY\x01\x00", ".npy"),
    (b"\x1f\x8b\x08\x00rest", "gzip"),
    (b"(dp0\nS'a'\n", "not a protocol-2"),
])
def test_wrong_kind_of_file_is_named(tmp_path, content, what):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=what):
        read_detectron_pickle(path)


def test_zip_file_is_named(tmp_path):
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(CheckpointError, match="zip archive"):
        read_detectron_pickle(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_detectron_pickle(tmp_path / "nope.pkl")


@pytest.mark.parametrize("obj,match", [
    ([1, 2], "top level is a list"),
    ({"blobs": {"a": 1}}, "blob 'a' is a int"),
    ({"blobs": {}, "cfg": "x", "extra": 1}, "unexpected top-level keys"),
    ({"a": np.zeros(2), 3: np.zeros(1)}, "non-string key"),
])
def test_wrong_structure(tmp_path, obj, match):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match=match):
        read_detectron_pickle(path)
