"""Read Detectron `.pkl` weight files without executing anything they name.

A pickle is a program: `pickle.load` imports and calls whatever globals the
stream names.  Detectron's files only need numpy arrays, dtypes and scalars
(plus the `_codecs.encode` shim Python 3 uses for bytes at protocol 2, and
numpy's `_frombuffer` for files re-saved at protocol 5), so the
unpickler below resolves exactly those names, and each to a stand-in of ours
that validates its arguments, never to the real numpy callable: a stream can
only build plain numeric arrays whose data it actually contains.

Python 2 `str` values are read as `bytes` (not latin-1 text): array payloads go
straight into numpy without the decode/re-encode round trip that
`encoding='latin1'` costs, and names and the cfg text are decoded here.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from gnconvert.errors import CheckpointError

DTYPE_CODE = re.compile(r"[biufc][0-9]{1,2}")  # plain bool/int/uint/float/complex only


@dataclass
class DetectronPickle:
    """What a Detectron weights file holds: its blobs and (if any) its embedded cfg."""

    blobs: Dict[str, np.ndarray]
    cfg_text: Optional[str]
    layout: str  # "blobs+cfg" | "bare"


class _Rejected(Exception):
    """A stand-in refused its arguments; becomes a CheckpointError with the offset."""


def _text(value) -> str:
    """A Python 2 str arrives as bytes; Python 2 and 3 text as str."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise _Rejected(f"expected a string, got {type(value).__name__}")


class _DtypeSpec:
    """Stand-in for `numpy.dtype(code, align, copy)`; its state is checked, not trusted."""

    def __init__(self, code):
        code = _text(code)
        if not DTYPE_CODE.fullmatch(code):
            raise _Rejected(f"numpy dtype {code!r} is not a plain numeric type")
        try:
            self.dtype = np.dtype(code)
        except TypeError as e:
            raise _Rejected(f"numpy dtype {code!r}: {e}") from None

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise _Rejected("numpy dtype state has an unknown layout")
        endian = _text(state[1])
        if endian not in ("<", ">", "|", "=") or state[2:5] != (None, None, None) or state[5:7] != (-1, -1):
            raise _Rejected("numpy dtype state describes a structured or sized type")
        if state[7] != 0 or (len(state) == 9 and state[8] is not None):
            raise _Rejected("numpy dtype state carries flags or metadata")
        if endian in "<>":
            self.dtype = self.dtype.newbyteorder(endian)


def _make_dtype(code, align=0, copy=1):
    return _DtypeSpec(code)


class _NdarrayToken:
    """What the name `numpy.ndarray` resolves to: a marker, not the class (not callable)."""

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


class _ArrayStub:
    """Result of `_reconstruct(ndarray, (0,), 'b')`; BUILD fills in the real array."""

    __slots__ = ("array", "_budget")

    def __init__(self, budget):
        self.array = None
        self._budget = budget

    def __setstate__(self, state):
        if self.array is not None:
            raise _Rejected("an array is built twice")
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Rejected("array state has an unknown layout")
        version, shape, spec, fortran, data = state
        if version != 1 or not isinstance(spec, _DtypeSpec) or not isinstance(fortran, bool):
            raise _Rejected("array state has an unknown layout")
        _check_shape(shape)
        if isinstance(data, str):
            data = data.encode("latin-1")  # Python 2 str read as text (protocol-2 Python 3 form)
        if not isinstance(data, bytes):
            raise _Rejected(f"array data is a {type(data).__name__}, not a byte string")
        self._budget.spend(_nbytes(shape, spec.dtype, data))
        array = np.ndarray.__new__(np.ndarray, (0,), "b")
        array.__setstate__((1, shape, spec.dtype, fortran, data))
        self.array = array


def _check_shape(shape) -> None:
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise _Rejected(f"array shape {shape!r} is not a tuple of sizes")


def _nbytes(shape, dtype: np.dtype, data) -> int:
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    if nbytes != len(data):
        raise _Rejected(f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes, has {len(data)}")
    return nbytes


class _Budget:
    """Array bytes may not exceed the file's size: a stream reusing one payload
    (memo references) cannot make gigabytes out of a small file."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, n: int):
        self.left -= n
        if self.left < 0:
            raise _Rejected("arrays declare more data than the file holds")


def _codecs_encode(text, encoding="utf-8"):
    """Python 3's protocol-2 spelling of bytes: `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or _text(encoding).replace("-", "").lower() != "latin1":
        raise _Rejected("_codecs.encode is allowed only as the latin-1 bytes shim")
    return text.encode("latin-1")


def _make_scalar(spec, data):
    if not isinstance(spec, _DtypeSpec):
        raise _Rejected("numpy scalar without a numeric dtype")
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, bytes) or len(data) != spec.dtype.itemsize:
        raise _Rejected(f"numpy scalar of dtype {spec.dtype} needs {spec.dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=spec.dtype, count=1)[0]


class _BoundedReader:
    """The file as the C unpickler sees it; a read past the end is named with its offset
    instead of allocating what a corrupt length field declares.  It offers no `peek`,
    so the unpickler reads exactly what it consumes and `tell()` locates a failure
    (a Detectron file has a few opcodes per blob, so the extra calls cost nothing)."""

    def __init__(self, f, size: int):
        self._f = f
        self._size = size

    def _check(self, n: int) -> int:
        pos = self._f.tell()
        if n is None or n < 0:
            return self._size - pos
        if n > self._size - pos:
            raise CheckpointError(
                f"truncated or corrupt pickle: at byte offset {pos} a value declares {n} bytes "
                f"but only {self._size - pos} remain; download the file again")
        return n

    def read(self, n=-1):
        return self._f.read(self._check(n))

    def readinto(self, buf):
        self._check(len(buf))
        return self._f.readinto(buf)

    def readline(self, limit=-1):
        return self._f.readline(limit)

    def tell(self):
        return self._f.tell()


class _SafeUnpickler(pickle.Unpickler):
    """The C unpickler with every global resolved through an allow list."""

    def __init__(self, reader, budget: _Budget):
        super().__init__(reader, encoding="bytes")
        self._allowed = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _make_dtype,
                         ("_codecs", "encode"): _codecs_encode}
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allowed[(module, "_reconstruct")] = self._reconstruct
            self._allowed[(module, "scalar")] = _make_scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            self._allowed[(module, "_frombuffer")] = self._frombuffer
        self._budget = budget

    def _reconstruct(self, subtype, shape, typecode):
        if subtype is not _NDARRAY:
            raise _Rejected("_reconstruct may only build numpy.ndarray")
        return _ArrayStub(self._budget)

    def _frombuffer(self, buf, spec, shape, order):
        """numpy's protocol-5 spelling of an array: the raw buffer, dtype, shape, order."""
        order = _text(order) if isinstance(order, (bytes, str)) else None
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(spec, _DtypeSpec) or order not in ("C", "F"):
            raise _Rejected("_frombuffer with arguments other than an array's buffer, dtype, shape and order")
        _check_shape(shape)
        self._budget.spend(_nbytes(shape, spec.dtype, buf))
        return np.frombuffer(buf, dtype=spec.dtype).reshape(shape, order=order).copy(order="K")

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise _Rejected(f"refusing to load global {module}.{name}: a weights file has no reason to name it")
        return found

    def persistent_load(self, pid):
        raise _Rejected("refusing a persistent id: a weights file has none")


def _locate(path: str, fallback: int) -> str:
    """Where a malformed stream first goes wrong, found by walking its opcodes
    (slow, so only on the error path); the unpickler's own position otherwise."""
    try:
        with open(path, "rb") as f:
            reader: Any = _BoundedReader(f, os.fstat(f.fileno()).st_size)  # a file-like object
            for _ in pickletools.genops(reader):
                pass
    except CheckpointError as e:  # a read past the end, with its offset
        return str(e).split(": ", 1)[-1]
    except Exception as e:  # pickletools: "at position N, opcode ... unknown" and the like
        return str(e)
    return f"at the opcode ending at byte offset {fallback}"


def read_detectron_pickle(path) -> DetectronPickle:
    """Load a Detectron weights pickle (either layout) into numpy arrays, safely."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        _check_magic(path, f.peek(16)[:16])
        reader = _BoundedReader(f, size)
        try:
            obj = _SafeUnpickler(reader, _Budget(size)).load()
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except _Rejected as e:
            raise CheckpointError(f"unsafe or malformed pickle {path}: {e} (the opcode ending at byte offset {reader.tell()})") from None
        except RecursionError:
            raise CheckpointError(f"malformed pickle {path}: nested too deeply") from None
        except MemoryError:
            raise CheckpointError(f"malformed pickle {path}: a value declares more memory than is available "
                                  f"(the opcode ending at byte offset {reader.tell()})") from None
        except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ... from a bad stream
            where = _locate(path, reader.tell())
            raise CheckpointError(f"malformed pickle {path}: {where} ({type(e).__name__}: {e})") from None
        if f.read(1):
            raise CheckpointError(f"malformed pickle {path}: data after the end of the pickle at byte offset {f.tell() - 1}")
    return _interpret(path, obj)


def _check_magic(path: str, head: bytes):
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return
    if head.startswith(b"PK\x03\x04"):
        what = "a zip archive (a torch.save file?)"
    elif head.lstrip()[:1] == b"<" or b"<html" in head.lower():
        what = "HTML (an error page instead of the download?)"
    elif head.startswith(b"\x1f\x8b"):
        what = "gzip data"
    elif head.startswith(b"\x93NUMPY"):
        what = "a .npy file"
    elif not head:
        what = "an empty file"
    else:
        what = f"bytes {head[:8]!r}"
    raise CheckpointError(f"{path} is not a protocol-2+ pickle: got {what}; pass a Detectron .pkl weights file")


def _blob_dict(path: str, value, where: str) -> Dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {where} is a {type(value).__name__}, expected a dict of arrays")
    blobs = {}
    for key, item in value.items():
        if not isinstance(key, (bytes, str)):
            raise CheckpointError(f"{path}: {where} has a non-string key {key!r}")
        name = _text(key)
        if isinstance(item, _ArrayStub) and item.array is not None:
            blobs[name] = item.array
        elif type(item) is np.ndarray:  # protocol 5
            blobs[name] = item
        elif isinstance(item, np.generic):
            blobs[name] = np.asarray(item)
        else:
            raise CheckpointError(f"{path}: blob {name!r} is a {type(item).__name__}, not a numpy array")
    return blobs


def _interpret(path: str, obj) -> DetectronPickle:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: top level is a {type(obj).__name__}, expected a dict")
    keys = {_text(k) if isinstance(k, (bytes, str)) else k: v for k, v in obj.items()}
    if "blobs" in keys and isinstance(keys["blobs"], dict):
        extra = sorted(map(str, set(keys) - {"blobs", "cfg"}))
        if extra:
            raise CheckpointError(f"{path}: unexpected top-level keys {extra} beside 'blobs'")
        cfg = keys.get("cfg")
        if cfg is not None and not isinstance(cfg, (bytes, str)):
            raise CheckpointError(f"{path}: 'cfg' is a {type(cfg).__name__}, expected YAML text")
        return DetectronPickle(_blob_dict(path, keys["blobs"], "'blobs'"),
                               None if cfg is None else _text(cfg), "blobs+cfg")
    return DetectronPickle(_blob_dict(path, obj, "the top-level dict"), None, "bare")
