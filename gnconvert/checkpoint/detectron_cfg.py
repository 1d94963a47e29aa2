"""Parse the Detectron config embedded in a weights file, without importing anything.

Detectron stores `yaml.dump(cfg)` of its AttrDict under Python 2: nested
`!!python/object/new:detectron.utils.collections.AttrDict` mappings,
`!!python/unicode` and `!!python/tuple` scalars, and numpy values spelled as
`numpy.core.multiarray._reconstruct` / `.scalar` / `numpy.dtype` applications
with `!!binary` payloads.  PyYAML's safe loader refuses those tags and its
unsafe loader would import and call them, so this loader knows exactly these
tags, rebuilds the values itself, and rejects every other tag by name.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Dict

import numpy as np
import yaml

from gnconvert.checkpoint.pickle_reader import DTYPE_CODE
from gnconvert.errors import CheckpointError, UsageError

_PY = "tag:yaml.org,2002:python/"
_ATTRDICT = _PY + "object/new:detectron.utils.collections.AttrDict"
_RECONSTRUCT = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")


class _NdarrayName:
    """`!!python/name:numpy.ndarray`: only ever an argument of _reconstruct."""


_NDARRAY = _NdarrayName()


class _Refused(Exception):
    """Raised inside the constructors; `_parse` names the text it came from."""


def _fail(node: yaml.Node, what: str):
    raise _Refused(f"line {node.start_mark.line + 1}: {what}")


class _CfgLoader(yaml.SafeLoader):
    """SafeLoader plus Detectron's Python-2 tags; its own registry, not PyYAML's global one."""


def _tuple(loader, node):
    return tuple(loader.construct_sequence(node, deep=True))


def _attrdict(loader, node):
    if not isinstance(node, yaml.MappingNode):
        _fail(node, "an AttrDict that is not a mapping")
    parts = loader.construct_mapping(node, deep=True)
    if set(parts) - {"dictitems", "state"}:
        _fail(node, f"an AttrDict with unexpected parts {sorted(set(parts) - {'dictitems', 'state'})}")
    items, state = parts.get("dictitems", {}), parts.get("state", {})
    if not isinstance(items, dict) or not isinstance(state, dict) or set(state) - {"__immutable__"}:
        _fail(node, "an AttrDict whose items or state are not what Detectron writes")
    return dict(items)


def _dtype_from(node, code, state) -> np.dtype:
    if not isinstance(code, str) or not DTYPE_CODE.fullmatch(code):
        _fail(node, f"numpy dtype {code!r} is not a plain numeric type")
    dtype = np.dtype(code)
    if state is not None:
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and state[1] in ("<", ">", "|", "=") and state[2:8] == (None, None, None, -1, -1, 0))
        if not ok:
            _fail(node, f"numpy dtype state {state!r} describes a structured or flagged type")
        if state[1] in "<>":
            dtype = dtype.newbyteorder(state[1])
    return dtype


def _dtype(loader, node):
    if not isinstance(node, yaml.MappingNode):
        _fail(node, "a numpy dtype that is not a mapping")
    parts = loader.construct_mapping(node, deep=True)
    args = parts.get("args")
    if not isinstance(args, list) or not 1 <= len(args) <= 3 or set(parts) - {"args", "state"}:
        _fail(node, "a numpy dtype with unexpected arguments")
    return _dtype_from(node, args[0], parts.get("state"))


def _name(loader, suffix, node):
    if suffix != "numpy.ndarray":
        _fail(node, f"refusing YAML tag !!python/name:{suffix}")
    return _NDARRAY


def _array(node, dtype, shape, fortran, data) -> np.ndarray:
    if not isinstance(dtype, np.dtype):
        _fail(node, "an array without a numpy dtype")
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        _fail(node, f"array shape {shape!r} is not a tuple of sizes")
    if not isinstance(data, bytes) or not isinstance(fortran, bool):
        _fail(node, "array data is not a !!binary payload")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        _fail(node, f"array of shape {shape} and dtype {dtype} does not match its {len(data)}-byte payload")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _apply(loader, suffix, node):
    if suffix in ("numpy.dtype",):
        return _dtype(loader, node)
    if suffix in _RECONSTRUCT:
        if not isinstance(node, yaml.MappingNode):
            _fail(node, "_reconstruct that is not a mapping")
        parts = loader.construct_mapping(node, deep=True)
        args, state = parts.get("args"), parts.get("state")
        if (not isinstance(args, list) or len(args) != 3 or args[0] is not _NDARRAY
                or not isinstance(state, tuple) or len(state) != 5 or state[0] != 1):
            _fail(node, "_reconstruct with arguments other than numpy.ndarray's")
        _, shape, dtype, fortran, data = state
        return _array(node, dtype, shape, fortran, data)
    if suffix in _SCALAR:
        if not isinstance(node, yaml.SequenceNode):
            _fail(node, "a numpy scalar that is not a sequence")
        dtype, data = (loader.construct_sequence(node, deep=True) + [None, None])[:2]
        if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
            _fail(node, "a numpy scalar whose payload does not match its dtype")
        return np.frombuffer(data, dtype=dtype, count=1)[0]
    _fail(node, f"refusing YAML tag !!python/object/apply:{suffix}")


def _refuse(loader, node):
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    _fail(node, f"refusing YAML tag {tag}: Detectron's cfg has no reason to use it")


def _refuse_multi(loader, suffix, node):
    _refuse(loader, node)


_CfgLoader.add_constructor(_PY + "unicode", _CfgLoader.construct_yaml_str)  # Python 2 text: a plain YAML string
_CfgLoader.add_constructor(_PY + "str", _CfgLoader.construct_yaml_str)
_CfgLoader.add_constructor(_PY + "tuple", _tuple)
_CfgLoader.add_constructor(_ATTRDICT, _attrdict)
_CfgLoader.add_multi_constructor(_PY + "object/apply:", _apply)
_CfgLoader.add_multi_constructor(_PY + "name:", _name)
_CfgLoader.add_multi_constructor(_PY, _refuse_multi)
_CfgLoader.add_multi_constructor("!", _refuse_multi)
_CfgLoader.add_constructor(None, _refuse)


def _parse(text: str, what: str) -> Dict[str, Any]:
    try:
        value = yaml.load(text, Loader=_CfgLoader)
    except _Refused as e:
        raise CheckpointError(f"{what}, {e}") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"{what} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} is a YAML {type(value).__name__}, expected a mapping of settings")
    return value


def parse_detectron_cfg(text: str) -> Dict[str, Any]:
    """The embedded cfg as nested plain dicts (tuples, numpy arrays/scalars as values)."""
    if not isinstance(text, str):
        raise CheckpointError(f"Detectron cfg must be text, got {type(text).__name__}")
    return _parse(text, "the checkpoint's embedded Detectron cfg")


def load_config_file(path) -> Dict[str, Any]:
    """A Detectron YAML config file (`--config`), parsed as safely as the embedded cfg.

    Only parses: merging the partial config over Detectron's defaults is the
    architecture module's job."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found; pass a Detectron YAML config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}; pass a Detectron YAML config") from None
    return check_config_keys(_parse(text, f"config file {path}"), f"config file {path}")


# --------------------------------------------------------------------------- known keys
# What Detectron's merge_cfg_from_file / merge_cfg_from_list do with a key that its cfg does
# not have (core/config.py): a deprecated key is ignored with a warning, a renamed one is
# an error naming the new key, anything else is "Non-existent config key".
DEPRECATED_KEYS = frozenset({
    "FINAL_MSG", "MODEL.DILATION", "ROOT_GPU_ID", "RPN.ON", "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED",
    "TRAIN.DROPOUT", "USE_GPU_NMS", "TEST.NUM_TEST_IMAGES",
})
RENAMED_KEYS = {
    "MODEL.PS_GRID_SIZE": "RFCN.PS_GRID_SIZE", "MODEL.ROI_HEAD": "FAST_RCNN.ROI_BOX_HEAD",
    "MRCNN.MASK_HEAD_NAME": "MRCNN.ROI_MASK_HEAD", "TRAIN.DATASET": "TRAIN.DATASETS",
    "TRAIN.PROPOSAL_FILE": "TRAIN.PROPOSAL_FILES", "TEST.SCALES": "TEST.SCALE", "TEST.DATASET": "TEST.DATASETS",
    "TEST.PROPOSAL_FILE": "TEST.PROPOSAL_FILES",
}
_FULL_CFG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "selftest",
                         "e2e_mask_rcnn_R-50-FPN_2x_gn.yaml")


def _flatten(cfg: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.cache
def known_keys() -> Dict[str, Any]:
    """Every key of Detectron's cfg with its value in 48616381's embedded cfg (a full dump of the
    cfg tree, the same 229 keys as Detectron's final core/config.py)."""
    with open(_FULL_CFG, encoding="utf-8") as f:
        return _flatten(parse_detectron_cfg(f.read()))


def check_key(key: str, where: str) -> bool:
    """True for a key Detectron has, False for a deprecated one (ignored); an error otherwise."""
    import difflib

    if key in known_keys():
        return True
    if key in DEPRECATED_KEYS:
        import warnings

        warnings.warn(f"{where}: Detectron's deprecated key {key} is ignored", stacklevel=3)
        return False
    if key in RENAMED_KEYS:
        raise UsageError(f"{where}: Detectron renamed {key} to {RENAMED_KEYS[key]}; use that key")
    close = difflib.get_close_matches(key, list(known_keys()), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UsageError(f"{where}: Detectron has no config key {key}{hint}; Detectron itself rejects it")


def check_config_keys(cfg: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A partial config file's keys checked as Detectron's merge does; deprecated keys dropped."""
    def walk(node: Dict[str, Any], prefix: str) -> Dict[str, Any]:
        kept: Dict[str, Any] = {}
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and any(k.startswith(full + ".") for k in known_keys()):
                kept[key] = walk(value, full + ".")
            elif check_key(full, where):
                kept[key] = value
        return kept

    return walk(cfg, "")
