"""The model catalog: Detectron's published GN models, by model id.

Every field in `model_ids.json` is a fact printed on Detectron's GN project page
(or MODEL_ZOO.md for the BN* baselines); the file's `source` says where each came
from.  The catalog is plain JSON so that `gnconvert list` and `gnconvert fetch`
start without importing torch.
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, Optional

from gnconvert.architecture.record import Kind
from gnconvert.errors import UsageError

CATALOG_NAME = "model_ids.json"
KINDS = tuple(k.value for k in Kind)
FILE_KINDS = ("model", "boxes", "masks")


class NoDownloadError(UsageError):
    """The model is in Detectron's table, but Detectron never published its files."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of Detectron's tables. Fields not printed for a model are None."""

    id: str
    name: str
    kind: Kind
    table: str
    depth: int
    norm: str  # "GN" | "AffineChannel" (gnconvert.architecture's spelling)
    box_head: Optional[str]  # "4conv1fc_gn" | "2fc"
    mask_head: Optional[str]  # "4conv_gn" | "4conv"
    lr_schedule: Optional[str]  # "2x" | "3x"
    max_iter: Optional[int]
    im_per_gpu: Optional[int]
    train_mem_gb: Optional[float]
    train_s_per_iter: Optional[float]
    train_hours: Optional[float]
    inference_s_per_im: Optional[str]  # as printed: "GPU + CPU"
    published: Dict[str, Any]  # box_ap, mask_ap | top1_error, crop
    detectron_config: Optional[str]
    init_weights: Optional[str]
    superseded: bool
    files: Dict[str, str] = field(default_factory=dict)  # what -> path relative to the base URL
    source: str = ""

    @property
    def title(self) -> str:
        """A short human name, e.g. 'R-50-FPN, GN 2x' or 'R-50-GN (ImageNet)'."""
        if self.kind == Kind.CLASSIFIER:
            return f"{self.name} (ImageNet)"
        return f"{self.name} {self.lr_schedule}"

    def published_summary(self) -> str:
        p = self.published
        if self.kind == Kind.CLASSIFIER:
            return f"top-1 error {p['top1_error']}% ({p['crop']} crop)"
        return f"box AP {p['box_ap']} / mask AP {p['mask_ap']}"

    def file(self, what: str) -> str:
        """The server-relative path of one published file; a clear error if there is none."""
        if not self.files:
            raise NoDownloadError(
                f"model {self.id} ({self.title}) has no published download: Detectron printed only "
                f"its {self.published_summary()}; pick a downloadable id from `gnconvert list`"
            )
        if what not in self.files:
            raise UsageError(
                f"model {self.id} ({self.title}) has no '{what}' file; it has: {', '.join(self.files)}"
            )
        return self.files[what]

    def to_dict(self) -> Dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Catalog:
    base_url: str
    source: Dict[str, str]
    models: Dict[str, ModelEntry]

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.models

    def get(self, model_id: str) -> ModelEntry:
        model_id = str(model_id).strip()
        if model_id in self.models:
            return self.models[model_id]
        raise UsageError(f"unknown model id '{model_id}'; {self._suggest(model_id)}")

    def _suggest(self, model_id: str) -> str:
        close = difflib.get_close_matches(model_id, list(self.models), n=3, cutoff=0.5)
        if not close:  # maybe a name like "R-50-FPN GN"
            by_name = {f"{e.name} {e.lr_schedule or ''}".lower(): e.id for e in self}
            names = difflib.get_close_matches(model_id.lower(), list(by_name), n=3, cutoff=0.4)
            close = [by_name[n] for n in names]
        if not close:
            return "run `gnconvert list` for the known ids"
        hints = ", ".join(f"{i} ({self.models[i].title})" for i in close)
        return f"did you mean {hints}? (`gnconvert list` shows all)"


def catalog_path() -> Path:
    """The packaged copy in a wheel install (setup.py copies it in at build time); the
    repository's top-level file in a checkout."""
    packaged = Path(__file__).resolve().parents[1] / "data" / CATALOG_NAME
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / CATALOG_NAME


def _entry(raw: Dict[str, Any]) -> ModelEntry:
    if raw.get("kind") not in KINDS:
        raise ValueError(f"catalog entry {raw.get('id')}: kind {raw.get('kind')!r} is not one of {KINDS}")
    entry = ModelEntry(**{**raw, "kind": Kind(raw["kind"])})
    for what, rel in entry.files.items():
        if what not in FILE_KINDS:
            raise ValueError(f"catalog entry {entry.id}: unknown file kind {what!r}")
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"catalog entry {entry.id}: file path {rel!r} must be relative, without '..'")
    return entry


@functools.cache
def load_catalog() -> Catalog:
    path = catalog_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"model catalog {path} is missing; reinstall gnconvert") from None
    models: Dict[str, ModelEntry] = {}
    for raw in doc["models"]:
        entry = _entry(raw)
        if entry.id in models:
            raise ValueError(f"catalog lists model id {entry.id} twice")
        models[entry.id] = entry
    return Catalog(base_url=doc["base_url"].rstrip("/"), source=doc["source"], models=models)


def get(model_id: str) -> ModelEntry:
    """The catalog entry for a Detectron model id; UsageError with suggestions if unknown."""
    return load_catalog().get(model_id)

