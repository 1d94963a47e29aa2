"""The converted checkpoint: one self-describing `.safetensors` file.

Weights under our PyTorch parameter names, and in the safetensors metadata
header one JSON document with everything needed to use them later without the
`.pkl`: the Architecture record (which drives the model builder and the test
settings), provenance (model id, source path and MD5, gnconvert version), the
blobs the mapping dropped and why, and Detectron's original cfg text.
safetensors holds only raw tensors, so loading one executes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import numpy as np

from gnconvert import __version__
from gnconvert.architecture import Architecture
from gnconvert.atomic import write_bytes_atomic
from gnconvert.errors import CheckpointError, MappingError

FORMAT = "gnconvert-converted"
FORMAT_VERSION = 2  # 2: the record carries `tensors_sha256`, checked on every load
_META_KEY = "gnconvert"


@dataclass
class ConvertedCheckpoint:
    """Weights plus the record that says what they are and where they came from."""

    state_dict: Dict[str, np.ndarray]
    arch: Architecture
    provenance: Dict[str, Any] = field(default_factory=dict)
    dropped: Dict[str, str] = field(default_factory=dict)  # Detectron blob -> why no parameter took it
    cfg_text: Optional[str] = None

    def torch_state_dict(self) -> Dict[str, Any]:
        """The weights as torch tensors (writable copies), ready for `load_state_dict`."""
        import torch

        return {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in self.state_dict.items()}

    @property
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.state_dict.values()))


def _as_float32(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise CheckpointError(f"parameter {name} is a {type(value).__name__}, not a float array")
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_against_arch(state: Mapping[str, np.ndarray], arch: Architecture, where: str) -> None:
    """The weights must be exactly the architecture's parameters, with its shapes."""
    from gnconvert.checkpoint.name_mapping import mapping_rules

    expected = {r.param: r.shape for r in mapping_rules(arch)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} != {expected[k]}"
                       for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    problems = [f"{len(v)} {what}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                for what, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if v]
    if problems:
        raise MappingError(f"{where}: weights do not match the architecture record: {'; '.join(problems)}")


def tensors_digest(state: Mapping[str, np.ndarray]) -> str:
    """sha256 over the arrays in name order: each name, then its bytes (float32 for parameters)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode("utf-8"))
        h.update(np.ascontiguousarray(state[name]).view(np.uint8).data)
    return h.hexdigest()


def check_finite(state: Mapping[str, np.ndarray], where: str) -> None:
    """NaN or inf in a weight is never a model; say which tensor."""
    for name, value in state.items():
        if not np.isfinite(value).all():
            bad = int(value.size - np.isfinite(value).sum())
            raise CheckpointError(f"{where}: weight {name} has {bad} NaN or infinite values; the file is corrupt "
                                  "(or was saved from a diverged run): download or convert it again")


def save_converted(path, state_dict: Mapping[str, Any], arch: Architecture, provenance: Mapping[str, Any],
                   dropped: Mapping[str, str], cfg_text: Optional[str]) -> None:
    """Write the converted checkpoint atomically (serialised in memory, then written and renamed)."""
    path = os.fspath(path)
    write_bytes_atomic(path, serialize_converted(state_dict, arch, provenance, dropped, cfg_text,
                                                 f"refusing to write {path}"))


def serialize_converted(state_dict: Mapping[str, Any], arch: Architecture, provenance: Mapping[str, Any],
                        dropped: Mapping[str, str], cfg_text: Optional[str], where: str = "refusing to convert") -> bytes:
    """The converted checkpoint's bytes.  The record holds a digest of the tensors, which every load checks."""
    from safetensors.numpy import save

    tensors = {name: _as_float32(name, value) for name, value in state_dict.items()}
    _check_against_arch(tensors, arch, where)
    check_finite(tensors, where)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "provenance": {"gnconvert_version": __version__, **dict(provenance)},
        "dropped": dict(sorted(dropped.items())),
        "cfg_text": cfg_text,
        "tensors_sha256": tensors_digest(tensors),
    }
    metadata = {"format": FORMAT, _META_KEY: json.dumps(record, sort_keys=False)}
    return save(tensors, metadata=metadata)


def is_converted_file(path) -> bool:
    """True for a safetensors file (an 8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20)


def load_converted(path) -> ConvertedCheckpoint:
    """Read a converted checkpoint back; its weights are checked against its own record."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"converted checkpoint {path} not found; create it with `gnconvert convert`")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            record = _record(path, metadata)
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); convert the model again") from None
    try:
        arch = Architecture.from_dict(record["architecture"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: architecture record is invalid ({e}); convert the model again") from None
    _check_against_arch(state, arch, path)
    if "tensors_sha256" in record:
        if tensors_digest(state) != record["tensors_sha256"]:
            raise CheckpointError(f"{path} is corrupt: its weights no longer match the digest recorded when it "
                                  "was converted; convert the model again")
    elif record["format_version"] >= 2:
        raise CheckpointError(f"{path}: metadata has no tensors_sha256; convert the model again")
    check_finite(state, path)
    return ConvertedCheckpoint(state_dict=state, arch=arch, provenance=dict(record.get("provenance", {})),
                               dropped=dict(record.get("dropped", {})), cfg_text=record.get("cfg_text"))


def _record(path: str, metadata: Mapping[str, str]) -> Dict[str, Any]:
    if metadata.get("format") != FORMAT or _META_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a gnconvert converted checkpoint "
                              f"(no '{_META_KEY}' metadata); convert the Detectron .pkl with `gnconvert convert`")
    try:
        record = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e}); convert the model again") from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: metadata has no format version; convert the model again")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written in format {version} by a newer gnconvert "
                              f"(this one reads up to {FORMAT_VERSION}); upgrade gnconvert")
    return record
