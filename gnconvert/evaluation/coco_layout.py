"""Find the COCO minival annotation file and its images.

Detectron evaluated on `coco_2014_minival` (`annotations/instances_minival2014.json`,
images in `val2014/`).  The same 5000 images with the same ids are COCO 2017 val
(`annotations/instances_val2017.json`, `val2017/`).  Either layout under one root
is accepted, or explicit paths; a missing piece is named with where to get it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gnconvert.errors import UsageError


@dataclass(frozen=True)
class CocoLayout:
    name: str  # "coco_2014_minival" | "coco_2017_val" | "custom"
    annotations: Path
    images: Path


# (name, annotation file under the root, image folder under the root, where to get them)
KNOWN_LAYOUTS = (
    ("coco_2014_minival", "annotations/instances_minival2014.json", "val2014",
     "instances_minival2014.json is in Detectron's coco_annotations_minival.tgz "
     "(https://dl.fbaipublicfiles.com/detectron/coco/coco_annotations_minival.tgz); "
     "val2014/ is http://images.cocodataset.org/zips/val2014.zip"),
    ("coco_2017_val", "annotations/instances_val2017.json", "val2017",
     "instances_val2017.json is in http://images.cocodataset.org/annotations/annotations_trainval2017.zip; "
     "val2017/ is http://images.cocodataset.org/zips/val2017.zip"),
)


class LayoutError(UsageError):
    """The annotation file or the image folder cannot be found."""


def _name_for(annotations: Path) -> str:
    """The known layout an annotation file's name belongs to, else "custom"."""
    return next((name for name, ann, _, _ in KNOWN_LAYOUTS if annotations.name == Path(ann).name), "custom")


def find_layout(coco_root: Optional[Path] = None, annotations: Optional[Path] = None,
                images: Optional[Path] = None) -> CocoLayout:
    """The layout to evaluate on; explicit --annotations / --images override the root's."""
    annotations = Path(annotations) if annotations else None
    images = Path(images) if images else None
    if annotations and annotations.is_dir():
        raise LayoutError(f"--annotations {annotations} is a folder; give the instances_*.json file itself")
    if annotations and not annotations.is_file():
        raise LayoutError(f"annotation file {annotations} does not exist")
    if images and not images.is_dir():
        raise LayoutError(f"image folder {images} does not exist")
    if annotations and images:
        return CocoLayout(_name_for(annotations), annotations, images)
    if coco_root is None:
        raise LayoutError("no COCO data given: pass --coco-root DIR (holding annotations/instances_minival2014.json "
                          "and val2014/, or annotations/instances_val2017.json and val2017/), "
                          "or both --annotations and --images")
    root = Path(coco_root)
    if not root.is_dir():
        raise LayoutError(f"--coco-root {root} does not exist or is not a folder")
    partial = []
    for name, ann_rel, img_rel, where in KNOWN_LAYOUTS:
        ann = annotations or root / ann_rel
        img = images or root / img_rel
        have_ann, have_img = ann.is_file(), img.is_dir()
        if have_ann and have_img:
            return CocoLayout(name if not annotations else _name_for(ann), ann, img)
        if have_ann or have_img:
            missing = img if have_ann else ann
            partial.append(f"{missing} is missing ({where})")
    if partial:
        raise LayoutError(f"incomplete COCO data under {root}: " + "; ".join(partial))
    raise LayoutError(
        f"no COCO minival under {root}: expected annotations/instances_minival2014.json with val2014/ "
        f"({KNOWN_LAYOUTS[0][3]}), or annotations/instances_val2017.json with val2017/ ({KNOWN_LAYOUTS[1][3]})")
