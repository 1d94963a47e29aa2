"""What every exporter needs: the loaded network, the bundled check image, safe output paths."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from gnconvert.architecture import Kind
from gnconvert.atomic import atomic_path, ensure_free_space, final_path_of, output_error, prepare_folder
from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError

BUNDLED_IMAGE = Path(__file__).resolve().parents[1] / "data" / "selftest" / "images" / "chelsea.png"


def loaded_network(ckpt: ConvertedCheckpoint):
    """`build_network(arch)` with the checkpoint's weights, in eval mode."""
    if ckpt.arch.kind != Kind.MASK_RCNN:
        raise UsageError(f"export handles Mask R-CNN checkpoints; this one is an ImageNet {ckpt.arch.kind}")
    return built_network(ckpt)


def built_network(ckpt: ConvertedCheckpoint):
    """Our network of any kind (Mask R-CNN or ImageNet classifier) with the checkpoint's weights, in eval mode."""
    from gnconvert.model import build_network

    network = build_network(ckpt.arch)
    network.load_state_dict(ckpt.torch_state_dict())
    return network.eval()


def check_output(path) -> str:
    """Fail early, before any heavy work, when `path` cannot be written (its folder is created)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a folder; pass a file name, e.g. {os.path.join(path, 'model.pt')}")
    prepare_folder(os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {path}: the file exists and is read-only; remove it or choose another name")
    return path


def write_file(tmp: str, data: bytes) -> None:
    """Write an artifact serialised in memory to its temporary name (see `writing`), after
    checking that the destination has room for it."""
    ensure_free_space(final_path_of(tmp), len(data))
    with open(tmp, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def writing(path) -> Iterator[str]:
    """A temporary name in `path`'s folder (a path `check_output` passed) that becomes `path`
    only if the block succeeds."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        if e.errno is None:  # not a file-system failure (e.g. TorchScript could not read a source file)
            raise
        raise output_error(path, e) from None
