"""Turn what a user names on the command line into a ConvertedCheckpoint.

SOURCE is one of: a converted `.safetensors` file (loaded as is), a Detectron
`.pkl` (read safely and converted on the fly), or a catalog model id (its
`.pkl` taken from the cache, fetched first if absent, then converted).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from gnconvert.checkpoint.converted import ConvertedCheckpoint, check_finite, is_converted_file, load_converted
from gnconvert.errors import CheckpointError, UsageError
from gnconvert.zoo import download

_PATH_SUFFIXES = (".pkl", ".pickle", ".safetensors", ".pth", ".pt", ".yaml")


def convert_detectron_pickle(path, config_path: Optional[str] = None, model_id: Optional[str] = None,
                             source_md5: Optional[str] = None) -> ConvertedCheckpoint:
    """Read a Detectron `.pkl`, work out its architecture, map every blob."""
    from gnconvert.architecture import architecture_from_checkpoint
    from gnconvert.checkpoint.detectron_cfg import parse_detectron_cfg
    from gnconvert.checkpoint.name_mapping import detectron_to_torch
    from gnconvert.checkpoint.pickle_reader import read_detectron_pickle

    path = os.fspath(path)
    pickle = read_detectron_pickle(path)
    if pickle.cfg_text is not None and config_path is not None:
        raise UsageError(f"{path} embeds its own Detectron cfg; --config is only for a .pkl without one "
                         "(e.g. an ImageNet backbone); drop --config")
    try:
        cfg = parse_detectron_cfg(pickle.cfg_text) if pickle.cfg_text is not None else None
        arch, how = architecture_from_checkpoint(cfg, pickle.blobs, config_path=config_path)
        mapped = detectron_to_torch(pickle.blobs, arch)
    except CheckpointError as e:
        if path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    check_finite(mapped.state_dict, path)
    provenance = {
        "model_id": model_id,
        "source_file": os.path.basename(path),
        "source_md5": source_md5 or download.file_digest(path),
        "source_format": "detectron-pkl",
        "pickle_layout": pickle.layout,
        "blob_count": len(pickle.blobs),
        "architecture_from": how,
    }
    return ConvertedCheckpoint(state_dict=mapped.state_dict, arch=arch, provenance=provenance,
                               dropped=mapped.dropped, cfg_text=pickle.cfg_text)


def load_source(source: str, config_path: Optional[str] = None,
                opts: Optional[Sequence] = None) -> ConvertedCheckpoint:
    """A converted checkpoint for SOURCE: a `.safetensors`, a Detectron `.pkl`, or a model id;
    `opts` (("KEY", "VALUE") pairs or "KEY=VALUE" strings) override its Detectron test settings."""
    pairs = parse_opts(opts or [])
    ckpt = _load_source(os.fspath(source), config_path)
    if pairs:
        import dataclasses

        from gnconvert.architecture import with_overrides

        ckpt = dataclasses.replace(ckpt, arch=with_overrides(ckpt.arch, pairs),
                                   provenance={**ckpt.provenance, "test_overrides": [list(p) for p in pairs]})
    return ckpt


def parse_opts(opts: Sequence) -> List[Tuple[str, str]]:
    """("KEY", "VALUE") pairs from pairs or "KEY=VALUE" strings."""
    pairs = []
    for item in opts:
        if isinstance(item, str):
            if "=" not in item:
                raise UsageError(f"override {item!r} is not KEY=VALUE (e.g. TEST.SCALE=600)")
            key, value = item.split("=", 1)
        else:
            key, value = item
        pairs.append((str(key).strip(), str(value).strip()))
    return pairs


def _load_source(source: str, config_path: Optional[str]) -> ConvertedCheckpoint:
    if os.path.exists(source):
        if os.path.isdir(source):
            raise UsageError(f"{source} is a folder; pass a Detectron .pkl, a converted .safetensors or a model id")
        if source.lower().endswith(".safetensors") and not is_converted_file(source):
            raise CheckpointError(f"{source} is not a safetensors file (no safetensors header); pass a "
                                  "converted .safetensors written by `gnconvert convert`, or convert the .pkl again")
        if is_converted_file(source):
            if config_path is not None:
                raise UsageError(f"{source} is already converted and carries its architecture; drop --config")
            return load_converted(source)
        return convert_detectron_pickle(source, config_path=config_path)
    if os.sep in source or "/" in source or source.lower().endswith(_PATH_SUFFIXES):
        raise UsageError(f"no such file: {source}; pass a Detectron .pkl, a converted .safetensors "
                         "or a model id from `gnconvert list`")
    path = os.fspath(download.fetch(source, "model")["model"])
    try:  # the MD5 it was just verified against (its .md5sum): no need to hash it again
        with open(path + ".md5sum") as f:
            md5 = f.read().split()[0].lower()
    except (OSError, IndexError):
        md5 = None
    return convert_detectron_pickle(path, config_path=config_path, model_id=source, source_md5=md5)
