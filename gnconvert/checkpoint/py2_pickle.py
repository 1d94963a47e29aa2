"""Write Detectron weight files exactly as Python 2.7 cPickle (protocol 2) with numpy 1.x did.

Used to turn converted weights back into a `.pkl` Detectron itself can load (the
round trip proves the mapping loses nothing) and to build full-size Python-2
style checkpoints for tests and benchmarks without a Python 2 interpreter.

The opcode stream follows cPickle's rules, so that for the same dict order the
bytes equal a real Python 2 file's:
- memo ids count from 1; a value is memoized only if something else also
  references it (dict keys, the cfg string, arrays, dtype objects, globals),
  never temporaries (shape tuples, array payloads, dtype codes, 1-char strings);
- dicts are written in SETITEMS batches of 1000, a lone item with SETITEM;
- an array is `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`
  followed by BUILD with `(1, shape, dtype, is_fortran, data-as-str)`; a dtype is
  `numpy.dtype('f4', 0, 1)` + BUILD `(3, '<', None, None, None, -1, -1, 0)`,
  reduced once per dtype and fetched from the memo afterwards.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Dict, Mapping, Optional

import numpy as np

from gnconvert.atomic import atomic_path
from gnconvert.errors import CheckpointError

_BATCHSIZE = 1000


class _Py2Pickler:
    def __init__(self, f: BinaryIO):
        self._f = f
        self._memo_size = 0
        self._globals: Dict[str, int] = {}
        self._dtypes: Dict[str, int] = {}

    # -- primitives ---------------------------------------------------------
    def _put(self) -> int:
        self._memo_size += 1
        i = self._memo_size
        self._f.write(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))
        return i

    def _get(self, i: int):
        self._f.write(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def _int(self, value: int):
        if 0 <= value <= 0xFF:
            self._f.write(b"K" + bytes([value]))
        elif 0 <= value <= 0xFFFF:
            self._f.write(b"M" + struct.pack("<H", value))
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            self._f.write(b"J" + struct.pack("<i", value))
        else:
            self._f.write(b"I%d\n" % value)  # cPickle's text INT for ints beyond 32 bits

    def _str(self, data: bytes | memoryview, memoize: bool):
        n = len(data)
        self._f.write(b"U" + bytes([n]) if n < 256 else b"T" + struct.pack("<i", n))
        self._f.write(data)
        if memoize and n >= 2:
            self._put()

    def _global(self, module: str, name: str):
        if name in self._globals:
            self._get(self._globals[name])
            return
        self._f.write(b"c%s\n%s\n" % (module.encode(), name.encode()))
        self._globals[name] = self._put()

    def _tuple_of_ints(self, values):
        if not values:
            self._f.write(b")")
            return
        if len(values) > 3:
            self._f.write(b"(")
        for v in values:
            self._int(int(v))
        self._f.write(b"t" if len(values) > 3 else b"\x84\x85\x86\x87"[len(values):len(values) + 1])

    # -- values -------------------------------------------------------------
    def _dtype(self, dtype: np.dtype):
        if dtype.kind not in "biufc" or dtype.fields is not None:
            raise CheckpointError(f"cannot write dtype {dtype} to a Detectron pickle: plain numeric types only")
        key = dtype.str
        if key in self._dtypes:
            self._get(self._dtypes[key])
            return
        self._global("numpy", "dtype")
        self._str(b"%s%d" % (dtype.kind.encode(), dtype.itemsize), memoize=False)
        self._f.write(b"K\x00K\x01\x87R")
        self._dtypes[key] = self._put()
        endian = "|" if dtype.itemsize == 1 else ("<" if dtype.byteorder in "=<" else ">")
        self._f.write(b"(K\x03")
        self._str(endian.encode(), memoize=False)
        self._f.write(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")

    def _array(self, a: np.ndarray):
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self._f.write(b"K\x00\x85")
        self._str(b"b", memoize=False)
        self._f.write(b"\x87R")
        self._put()
        self._f.write(b"(K\x01")
        self._tuple_of_ints(a.shape)
        self._dtype(a.dtype)
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        self._f.write(b"\x88" if fortran else b"\x89")
        data = np.asfortranarray(a) if fortran else np.ascontiguousarray(a)
        self._str(data.reshape(-1, order="A").view(np.uint8).data, memoize=False)
        self._f.write(b"tb")

    def _value(self, value):
        if isinstance(value, dict):
            self._dict(value)
        elif isinstance(value, str):
            self._str(value.encode("latin-1"), memoize=True)
        elif isinstance(value, np.ndarray):
            self._array(value)
        else:
            raise CheckpointError(f"cannot write a {type(value).__name__} to a Detectron pickle")

    def _dict(self, d: Mapping):
        self._f.write(b"}")
        self._put()
        items = list(d.items())
        for start in range(0, len(items), _BATCHSIZE):
            batch = items[start:start + _BATCHSIZE]
            if len(batch) > 1:
                self._f.write(b"(")
            for key, value in batch:
                self._str(key.encode("latin-1"), memoize=True)
                self._value(value)
            self._f.write(b"u" if len(batch) > 1 else b"s")

    def dump(self, obj):
        self._f.write(b"\x80\x02")
        self._value(obj)
        self._f.write(b".")


def dumps_detectron_pickle(blobs: Mapping[str, np.ndarray], cfg_text: Optional[str] = None,
                           layout: str = "blobs+cfg") -> bytes:
    """The pickle bytes, for small payloads and tests."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf).dump(_top_level(blobs, cfg_text, layout))
    return buf.getvalue()


def _top_level(blobs, cfg_text, layout):
    for name, value in blobs.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"blob {name!r}: expected a str name and a numpy array")
    if layout == "bare":
        if cfg_text is not None:
            raise CheckpointError("a bare Detectron pickle has no place for a cfg; use layout='blobs+cfg'")
        return dict(blobs)
    if layout != "blobs+cfg":
        raise CheckpointError(f"unknown pickle layout {layout!r}; use 'blobs+cfg' or 'bare'")
    # Python 2 iterates {'blobs', 'cfg'} with 'cfg' first; keep that order
    return {"cfg": cfg_text, "blobs": dict(blobs)} if cfg_text is not None else {"blobs": dict(blobs)}


def write_detectron_pickle(path, blobs: Mapping[str, np.ndarray], cfg_text: Optional[str] = None,
                           layout: str = "blobs+cfg") -> None:
    """Write `blobs` (in their dict order) as a Python-2 Detectron `.pkl`, atomically."""
    path = os.fspath(path)
    obj = _top_level(blobs, cfg_text, layout)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _Py2Pickler(f).dump(obj)
