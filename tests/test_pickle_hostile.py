"""Hostile pickles: each is refused with a CheckpointError and nothing it names ever runs.

Every payload that would execute code would create a canary file; the tests
check the canary is absent afterwards.  The mutation test feeds random
corruptions of a genuine Python 2 Detectron file (plus spliced-in code-running
snippets) through the reader: it must load to arrays or raise CheckpointError.
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gnconvert.checkpoint.pickle_reader import read_detectron_pickle
from gnconvert.errors import CheckpointError

TRIPPED = []


def trip(*args):
    """A global a hostile pickle may name; calling it would prove code ran."""
    TRIPPED.append(args)


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    TRIPPED.clear()
    yield path
    assert not path.exists(), "a hostile pickle executed code"
    assert TRIPPED == [], "a hostile pickle called a global"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _s(text) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def _in_dict(value: bytes) -> bytes:
    """{'w': value} at protocol 2, the way a blob would sit."""
    return b"\x80\x02}" + _s("w") + value + b"s."


def _code_payloads(canary_path: str):
    touch = f"open({canary_path!r}, 'w').write('x')"
    yield "os.system", _in_dict(_call(_global("os", "system"), _s(f"touch {canary_path}")))
    yield "posix.system", _in_dict(_call(_global("posix", "system"), _s(f"touch {canary_path}")))
    yield "subprocess.Popen", _in_dict(_call(_global("subprocess", "Popen"),
                                             b"(" + _s("touch") + _s(canary_path) + b"l"))
    yield "builtins.eval", _in_dict(_call(_global("builtins", "eval"), _s(touch)))
    yield "__builtin__.eval", _in_dict(_call(_global("__builtin__", "eval"), _s(touch)))
    yield "builtins.exec", _in_dict(_call(_global("builtins", "exec"), _s(touch)))
    yield "builtins.getattr", _in_dict(_call(
        _call(_global("builtins", "getattr"), _call(_global("builtins", "__import__"), _s("os")), _s("system")),
        _s(f"touch {canary_path}")))
    yield "builtins.__import__", _in_dict(_call(_global("builtins", "__import__"), _s("os")))
    yield "test_pickle_hostile.trip", _in_dict(_call(_global(__name__, "trip"), _s("x")))
    yield "numpy.testing._private.utils.runstring", _in_dict(
        _call(_global("numpy.testing._private.utils", "runstring"), _s(touch), b"}"))
    yield "numpy.load", _in_dict(_call(_global("numpy", "load"), _s(canary_path)))
    yield "numpy.ones", _in_dict(_call(_global("numpy", "ones"), b"J\xff\xff\xff\x7f\x85"))
    yield "numpy.frombuffer", _in_dict(_call(_global("numpy", "frombuffer"), _s("abcd")))
    yield "numpy.ma.core._mareconstruct", _in_dict(_call(_global("numpy.ma.core", "_mareconstruct"), b"N"))
    yield "numpy.core.multiarray.empty", _in_dict(_call(_global("numpy.core.multiarray", "empty"), b"K\x01\x85"))
    yield "copyreg._reconstructor", _in_dict(_call(_global("copyreg", "_reconstructor"), b"NNN"))
    yield "copy_reg._reconstructor", _in_dict(_call(_global("copy_reg", "_reconstructor"), b"NNN"))
    yield "operator.attrgetter", _in_dict(_call(_global("operator", "attrgetter"), _s("system")))
    yield "torch._utils._rebuild_tensor", _in_dict(_call(_global("torch._utils", "_rebuild_tensor_v2"), b"N"))
    # protocol-4 STACK_GLOBAL spelling of os.system
    yield "os.system", (b"\x80\x04}" + _s("w") + b"\x8c\x02os\x8c\x06system\x93("
                        + _s(f"touch {canary_path}") + b"tRs.")
    # protocol-0 INST / protocol-1 OBJ also resolve a global
    yield "os.system", b"\x80\x02(" + _s(f"touch {canary_path}") + b"ios\nsystem\n."


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _EvilSubprocess:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (subprocess.check_call, (["touch", self.path],))


def test_code_running_globals_are_refused_by_name(canary):
    for name, payload in _code_payloads(str(canary)):
        path = canary.parent / "hostile.pkl"
        path.write_bytes(payload)
        with pytest.raises(CheckpointError) as e:
            read_detectron_pickle(path)
        assert name in str(e.value), (name, str(e.value))


@pytest.mark.parametrize("evil", [_Evil, _EvilSubprocess])
def test_reduce_tricks_from_pickle_dumps(canary, evil):
    # a genuine weights dict with one blob replaced by an object whose __reduce__ runs a command
    payload = {"blobs": {"conv1_w": np.zeros((2, 2), np.float32), "x": evil(str(canary))}, "cfg": "A: 1"}
    path = canary.parent / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load global"):
        read_detectron_pickle(path)


_RECON = _global("numpy.core.multiarray", "_reconstruct")
_NDARRAY = _global("numpy", "ndarray")
_STUB = _RECON + _NDARRAY + b"K\x00\x85" + _s("b") + b"\x87R"


def _dtype(code: str, state_tail: bytes = b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t") -> bytes:
    return _global("numpy", "dtype") + _s(code) + b"K\x00K\x01\x87R(K\x03" + _s("<") + state_tail + b"b"


def _array(shape: bytes, dtype: bytes, data: bytes, fortran: bytes = b"\x89") -> bytes:
    return _STUB + b"(K\x01" + shape + dtype + fortran + data + b"tb"


@pytest.mark.parametrize("payload,match", [
    # numpy.ndarray used as a callable to allocate 16 GiB
    (_in_dict(_NDARRAY + b"(J\x00\x00\x00\x80J\x00\x00\x00\x02tR"), "not callable|TypeError"),
    # a declared shape of 10^12 float64 with 4 bytes of data
    (_in_dict(_array(b"\x8a\x06" + (10**12).to_bytes(6, "little") + b"\x85", _dtype("f8"), _s("abcd"))), "needs 8000000000000 bytes"),
    # a declared shape whose byte count overflows
    (_in_dict(_array(b"(J\xff\xff\xff\x7fJ\xff\xff\xff\x7fJ\xff\xff\xff\x7fJ\xff\xff\xff\x7ft", _dtype("f8"), _s("ab"))),
     "needs"),
    # object dtype: the payload would be a list of arbitrary pickled objects
    (_in_dict(_array(b"K\x01\x85", _dtype("O8"), b"(N" + b"l")), "not a plain numeric type"),
    # structured dtype via its state
    (_in_dict(_array(b"K\x01\x85", _dtype("f4", b"N(" + _s("a") + b"t}J\x04\x00\x00\x00J\xff\xff\xff\xffK\x10t"),
                     _s("abcd"))), "structured"),
    # a BINSTRING that declares 2 GiB - 1 in a tiny file
    (_in_dict(b"T\xff\xff\xff\x7fabc"), "declares 2147483647 bytes"),
    # protocol-4 BINBYTES8 declaring 2^60 bytes
    (b"\x80\x04}" + _s("w") + b"\x8e" + struct.pack("<Q", 1 << 60) + b"xy" + b"s.", "declares"),
    (b"\x80\x04}" + _s("w") + b"\x8e" + struct.pack("<Q", 1 << 34) + b"xy" + b"s.", "declares"),
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"}.", "declares"),
    # _codecs.encode with a decompressing codec (a zip bomb in two lines)
    (_in_dict(_call(_global("_codecs", "encode"), _s("x"), _s("zlib_codec"))), "latin-1 bytes shim"),
    # _reconstruct asked to build something other than ndarray
    (_in_dict(_RECON + _global("numpy", "dtype") + b"K\x00\x85" + _s("b") + b"\x87R"), "only build numpy.ndarray"),
    # the same array built twice (state swapped after the fact)
    (b"\x80\x02}" + _s("w") + _array(b"K\x01\x85", _dtype("f4"), _s("abcd"))[:-1] + b"b"
     + b"(K\x01K\x01\x85" + _dtype("f4") + b"\x89" + _s("abcd") + b"tbs.", "built twice"),
    # protocol-5 _frombuffer: a declared shape larger than its buffer, and a non-buffer argument
    (b"\x80\x05}" + _s("w") + _call(_global("numpy._core.numeric", "_frombuffer"), b"\x96\x04\x00\x00\x00\x00\x00\x00\x00abcd",
                                    _dtype("f4"), b"J\x00\x00\x00\x01\x85", _s("C")) + b"s.", "needs 67108864 bytes, has 4"),
    (_in_dict(_call(_global("numpy.core.numeric", "_frombuffer"), b"N", _dtype("f4"), b"K\x01\x85", _s("C"))),
     "_frombuffer with arguments other than"),
    # persistent ids (torch.save style) are refused
    (_in_dict(b"N" + b"Q"), "persistent"),
    # stack tricks
    (b"\x80\x02s.", "malformed pickle"),
    (b"\x80\x02((((((((((((((.", "malformed pickle"),
    (b"\x80\x02}" + _s("w") + b"K\x01", "truncated|malformed"),
    (b"\x80\x02\xff", "at position 2, opcode b'\\\\xff' unknown"),
    (b"\x80\x02}" + _s("w") + b"K\x01K\x02K\x03s.", "at the opcode ending at byte offset 13"),
])
def test_hostile_structures_are_refused(tmp_path, canary, payload, match):
    path = tmp_path / "h.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=match):
        read_detectron_pickle(path)


def test_memo_reuse_cannot_amplify_a_small_file(tmp_path, canary):
    # one 64 KiB payload memoized once and referenced 200 times: 12.8 MB of arrays from a 66 KB file
    data = b"\x00" * 65536
    first = _STUB + b"(K\x01M\x00\x40\x85" + _dtype("f4") + b"\x89" + _s(data) + b"r\x00\x10\x00\x00tb"
    again = b"".join(_s(f"w{i}") + _STUB + b"(K\x01M\x00\x40\x85" + _dtype("f4") + b"\x89j\x00\x10\x00\x00tb"
                     for i in range(200))
    path = tmp_path / "amp.pkl"
    path.write_bytes(b"\x80\x02}(" + _s("w") + first + again + b"u.")
    with pytest.raises(CheckpointError, match="more data than the file holds"):
        read_detectron_pickle(path)


def test_deep_nesting_is_an_error_not_a_crash(tmp_path, canary):
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".")
    with pytest.raises(CheckpointError, match="top level is a list"):
        read_detectron_pickle(path)


def test_every_truncation_of_a_real_file_is_reported(golden_dir, tmp_path, canary):
    raw = (golden_dir / "py2" / "small_with_cfg.pkl").read_bytes()
    path = tmp_path / "t.pkl"
    for cut in sorted({1, 2, 3, 5, 12, 13, 100, 10561, 10575, 10650, 10700, 10712, len(raw) // 2, len(raw) - 1}):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated|malformed|not a protocol"):
            read_detectron_pickle(path)


def test_truncated_payload_names_its_offset(golden_dir, tmp_path):
    raw = (golden_dir / "py2" / "small_blobs_only.pkl").read_bytes()
    path = tmp_path / "t.pkl"
    path.write_bytes(raw[:5000])  # inside fc6_w's 802816-byte payload, which starts at offset 145
    with pytest.raises(CheckpointError, match="at byte offset 145 a value declares 802816 bytes but only 4855 remain"):
        read_detectron_pickle(path)


_SNIPPETS = [
    b"cos\nsystem\n(U\x05touchtR",
    b"cposix\nsystem\n(U\x05touchtR",
    b"c__builtin__\neval\n(U\x0ftrip_canary(1)tR",
    _global(__name__, "trip") + b"(tR",
    b"\x8c\x02os\x8c\x06system\x93",
    b"cnumpy\nndarray\n(K\x05tR",
]


@st.composite
def _mutations(draw, size):
    kind = draw(st.sampled_from(["flip", "overwrite", "delete", "insert", "truncate", "splice"]))
    pos = draw(st.integers(0, size - 1))
    if kind == "flip":
        return kind, pos, draw(st.integers(1, 255))
    if kind == "overwrite":
        return kind, pos, draw(st.binary(min_size=1, max_size=8))
    if kind == "delete":
        return kind, pos, draw(st.integers(1, 64))
    if kind == "insert":
        return kind, pos, draw(st.binary(min_size=1, max_size=8))
    if kind == "splice":
        return kind, pos, draw(st.sampled_from(_SNIPPETS))
    return kind, pos, None


def _mutate(raw: bytes, mutation) -> bytes:
    kind, pos, arg = mutation
    pos %= len(raw)
    if kind == "flip":
        return raw[:pos] + bytes([raw[pos] ^ arg]) + raw[pos + 1:]
    if kind == "overwrite":
        return raw[:pos] + arg + raw[pos + len(arg):]
    if kind == "delete":
        return raw[:pos] + raw[pos + arg:]
    if kind in ("insert", "splice"):
        return raw[:pos] + arg + raw[pos:]
    return raw[:pos]


# Half the examples aim the first mutation at small_with_cfg.pkl's opcode regions (outside
# the two big payloads), where it changes structure rather than float values.
_REAL = "small_with_cfg.pkl"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_file_loads_to_arrays_or_raises_checkpoint_error(golden_dir, tmp_path, data):
    raw = (golden_dir / "py2" / _REAL).read_bytes()
    TRIPPED.clear()
    mutations = data.draw(st.lists(_mutations(len(raw)), min_size=1, max_size=3))
    focus = data.draw(st.booleans())
    if focus:  # retarget the first mutation at an opcode (not inside a payload)
        kind, _, arg = mutations[0]
        mutations[0] = (kind, data.draw(st.one_of(st.integers(0, 10700), st.integers(813520, 813600),
                                                  st.integers(829980, len(raw) - 1))), arg)
    mutated = raw
    for m in mutations:
        mutated = _mutate(mutated, m) if mutated else mutated
    path = tmp_path / "m.pkl"
    path.write_bytes(mutated)
    try:
        ckpt = read_detectron_pickle(path)
    except CheckpointError as e:
        event(f"refused: {str(e).split(': ')[1][:40]}")
    else:
        event("loaded")
        assert all(type(v) is np.ndarray for v in ckpt.blobs.values())
        assert ckpt.cfg_text is None or isinstance(ckpt.cfg_text, str)
    assert TRIPPED == []
    assert not os.path.exists("touch")
