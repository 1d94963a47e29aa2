"""Turn what a user names on the command line into a ConvertedCheckpoint.

SOURCE is one of: a converted `.safetensors` file (loaded as is), a Detectron
`.pkl` (read safely and converted on the fly), or a catalog model id (its
`.pkl` taken from the cache, fetched first if absent, then converted).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

from . import download
from .converted import ConvertedCheckpoint, is_converted_file, load_converted
from .errors import UsageError

_PATH_SUFFIXES = (".pkl", ".pickle", ".safetensors", ".pth", ".pt", ".yaml")


def convert_detectron_pickle(path, config_path: Optional[str] = None, model_id: Optional[str] = None,
                             source_md5: Optional[str] = None) -> ConvertedCheckpoint:
    """Read a Detectron `.pkl`, work out its architecture, map every blob."""
    from .architecture import architecture_from_checkpoint
    from .detectron_cfg import parse_detectron_cfg
    from .name_mapping import detectron_to_torch
    from .pickle_reader import read_detectron_pickle

    path = os.fspath(path)
    pickle = read_detectron_pickle(path)
    if pickle.cfg_text is not None and config_path is not None:
        raise UsageError(f"{path} embeds its own Detectron cfg; --config is only for a .pkl without one "
                         "(e.g. an ImageNet backbone); drop --config")
    cfg = parse_detectron_cfg(pickle.cfg_text) if pickle.cfg_text is not None else None
    arch, how = architecture_from_checkpoint(cfg, pickle.blobs, config_path=config_path)
    mapped = detectron_to_torch(pickle.blobs, arch)
    provenance = {
        "model_id": model_id,
        "source_path": os.path.abspath(path),
        "source_md5": source_md5 or download.file_md5(path),
        "source_format": "detectron-pkl",
        "pickle_layout": pickle.layout,
        "blob_count": len(pickle.blobs),
        "architecture_from": how,
    }
    return ConvertedCheckpoint(state_dict=mapped.state_dict, arch=arch, provenance=provenance,
                               dropped=mapped.dropped, cfg_text=pickle.cfg_text)


def _looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or source.lower().endswith(_PATH_SUFFIXES)


def model_pickle_path(model_id: str, progress: Optional[bool] = None) -> Tuple[str, Optional[str]]:
    """The cached `.pkl` of a catalog model, fetched if absent, and the MD5 it was just
    verified against (the cache's `<file>.md5sum`), so it need not be hashed again."""
    path = os.fspath(download.fetch(model_id, "model", progress=progress)["model"])
    try:
        with open(path + ".md5sum") as f:
            md5 = f.read().split()[0].lower()
    except (OSError, IndexError):
        md5 = None
    return path, md5


def load_source(source: str, config_path: Optional[str] = None,
                progress: Optional[bool] = None) -> ConvertedCheckpoint:
    """A converted checkpoint for SOURCE: a `.safetensors`, a Detectron `.pkl`, or a model id."""
    source = os.fspath(source)
    if os.path.exists(source):
        if os.path.isdir(source):
            raise UsageError(f"{source} is a folder; pass a Detectron .pkl, a converted .safetensors or a model id")
        if is_converted_file(source):
            if config_path is not None:
                raise UsageError(f"{source} is already converted and carries its architecture; drop --config")
            return load_converted(source)
        return convert_detectron_pickle(source, config_path=config_path)
    if _looks_like_path(source):
        raise UsageError(f"no such file: {source}; pass a Detectron .pkl, a converted .safetensors "
                         "or a model id from `gnconvert list`")
    path, md5 = model_pickle_path(source, progress=progress)
    return convert_detectron_pickle(path, config_path=config_path, model_id=source, source_md5=md5)
