"""The Python-2 writer: real py2 bytes reproduced, plain pickle reads it back."""
from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gnconvert.checkpoint.pickle_reader import read_detectron_pickle
from gnconvert.checkpoint.py2_pickle import dumps_detectron_pickle, write_detectron_pickle
from gnconvert.errors import CheckpointError


def _real(golden_dir, name):
    raw = (golden_dir / "py2" / name).read_bytes()
    return raw, pickle.loads(raw, encoding="latin1")


@pytest.mark.parametrize("name,layout", [("small_with_cfg.pkl", "blobs+cfg"), ("small_blobs_only.pkl", "bare")])
def test_writer_reproduces_real_python2_bytes(golden_dir, name, layout):
    raw, obj = _real(golden_dir, name)
    blobs, cfg = (obj, None) if layout == "bare" else (obj["blobs"], obj["cfg"])
    assert dumps_detectron_pickle(blobs, cfg, layout) == raw


def _structure(data: bytes):
    """Opcode names and GLOBAL args, with memo indices and payloads left out."""
    return [(op.name, arg if op.name == "GLOBAL" else None) for op, arg, _ in pickletools.genops(data)
            if op.name not in ("BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET")]


def test_structure_matches_real_file_for_new_arrays(golden_dir):
    # arrays other than the golden ones (different values and order) still follow the real layout
    raw, obj = _real(golden_dir, "small_blobs_only.pkl")
    rng = np.random.default_rng(0)
    blobs = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in obj.items()}
    ours = dumps_detectron_pickle(blobs, layout="bare")
    assert _structure(ours) == _structure(raw)


def test_many_blobs_use_long_memo_and_batches(tmp_path):
    blobs = {f"blob_{i}_w": np.full((2, i % 5 + 1), i, np.float32) for i in range(1100)}
    path = tmp_path / "many.pkl"
    write_detectron_pickle(path, blobs, cfg_text="A: 1\n")
    data = path.read_bytes()
    names = [op.name for op, _, _ in pickletools.genops(data)]
    assert "LONG_BINPUT" in names  # memo ids past 255
    # blobs in batches of 1000 + 100, then the top dict {'cfg', 'blobs'}
    assert names.count("SETITEMS") == 3 and names.count("SETITEM") == 0
    back = pickle.loads(data, encoding="latin1")
    assert back["cfg"] == "A: 1\n" and list(back["blobs"]) == list(blobs)
    for k, v in blobs.items():
        np.testing.assert_array_equal(back["blobs"][k], v)
    assert list(os.listdir(tmp_path)) == ["many.pkl"]


_dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_, np.float16])


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)), min_size=1, max_size=4),
       fortran=st.booleans())
def test_plain_pickle_and_our_reader_read_back_what_we_wrote(tmp_path_factory, arrays, fortran):
    blobs = {f"b{i}": (np.asfortranarray(a) if fortran else a) for i, a in enumerate(arrays)}
    data = dumps_detectron_pickle(blobs, layout="bare")
    plain = pickle.loads(data, encoding="latin1")
    path = tmp_path_factory.mktemp("rt") / "x.pkl"
    path.write_bytes(data)
    ours = read_detectron_pickle(path).blobs
    for k, v in blobs.items():
        for got in (plain[k], ours[k]):
            assert got.dtype == v.dtype and got.shape == v.shape
            np.testing.assert_array_equal(got, v)


def test_rejects_unwritable_values_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="dtype object"):
        write_detectron_pickle(tmp_path / "x.pkl", {"a": np.array([object()], dtype=object)})
    with pytest.raises(CheckpointError, match="bare"):
        write_detectron_pickle(tmp_path / "x.pkl", {"a": np.zeros(1)}, cfg_text="x", layout="bare")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n,setitems,setitem", [(1, 0, 1), (1000, 1, 0), (1001, 1, 1), (2001, 2, 1)])
def test_cpickle_batching(n, setitems, setitem):
    # cPickle writes dict items in MARK ... SETITEMS batches of 1000; a batch of one is a bare SETITEM
    blobs = {f"b{i}": np.zeros(1, np.float32) for i in range(n)}
    names = [op.name for op, _, _ in pickletools.genops(dumps_detectron_pickle(blobs, layout="bare"))]
    assert (names.count("SETITEMS"), names.count("SETITEM")) == (setitems, setitem)
    assert list(pickle.loads(dumps_detectron_pickle(blobs, layout="bare"), encoding="latin1")) == list(blobs)
