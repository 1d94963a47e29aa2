"""Every file gnconvert writes for a user goes through here: write-then-rename, so a crash or a
full disk never leaves a half-written output, and a failed write becomes one line that names
the path and says what to do.

Writers serialise into memory first (`torch.jit.save` and safetensors to bytes): a library
that writes its own file can abort inside C++ on a full disk, while a failed Python write is
an OSError we can explain.  Where the size is known, the free space is checked up front.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from gnconvert.errors import GnconvertError, UsageError

NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # errnos that mean "the disk (or quota) is full"
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_MARGIN = 16 << 20  # leave this much free beyond what is written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


OUTPUT_FOLDER = "choose another output folder"  # what a user can do about a failed write, by default


def output_error(path, e: OSError, elsewhere: str = OUTPUT_FOLDER, error: type = GnconvertError) -> GnconvertError:
    """One line for a failed write of `path`: what happened and what to do (`elsewhere`: where else to write)."""
    if e.errno in NO_SPACE:
        return error(f"ran out of space writing {path} ({e.strerror}); nothing was left behind: "
                     f"free some space or {elsewhere}")
    if e.errno in _NO_PERMISSION:
        return error(f"cannot write {path}: no permission ({e.strerror}); {elsewhere}")
    return error(f"cannot write {path}: {e.strerror or e}; check the folder and its free space, or {elsewhere}")


def prepare_folder(folder) -> Path:
    """The output folder, created with its parents if missing; an error if it cannot be."""
    folder = Path(folder)
    blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"cannot write in {folder}: {blocking} is a file, not a folder; choose another output location")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(folder, e) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {folder}: no permission; choose a writable output folder")
    return folder


def ensure_free_space(path, nbytes: int, elsewhere: str = OUTPUT_FOLDER, error: type = GnconvertError) -> None:
    """Fail before writing when the destination's file system has too little room."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # nothing to say before trying
    if free < nbytes + _MARGIN:
        raise error(f"not enough space for {path}: it needs {nbytes / 2**20:.0f} MiB and {folder} has "
                    f"{free / 2**20:.0f} MiB free; free some space or {elsewhere}")


def final_path_of(tmp) -> Path:
    """The destination of a temporary path made by `atomic_path` (for messages)."""
    tmp = Path(tmp)
    name = tmp.name
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return tmp.with_name(name[1:].rsplit(".", 2)[0])
    return tmp


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path in the destination's folder; on success it becomes `path`,
    on any failure it is removed and `path` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp (and writers that recreate the file) leave 0600; set the usual
        # permissions only now, after the writer is done with the file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes, elsewhere: str = OUTPUT_FOLDER, error: type = GnconvertError) -> None:
    """`data` becomes `path` whole or not at all; a failure is a GnconvertError naming `path`."""
    prepare_folder(Path(path).parent)
    ensure_free_space(path, len(data), elsewhere, error)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as e:
        raise output_error(path, e, elsewhere, error) from None


def write_json_atomic(path, obj, **dump_kwargs) -> None:
    write_bytes_atomic(path, json.dumps(obj, **dump_kwargs).encode("utf-8"))
