"""The folder a `predict` or `verify` run writes into, kept so that a killed run resumes.

Per-image records are appended to `partial/` as they come (`PartialResults`, fingerprinted so
a resume never mixes two runs); the final files are written when the run ends and the partial
records go.  `predict` owns its folder (`exclusive`): a manifest (`.gnconvert-predict.json`)
marks it, a folder holding anything else is refused, and a new run replaces the earlier run's
files as a set.  `verify` shares its folder with whatever else is there and keeps no manifest.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, TextIO

from gnconvert.atomic import output_error, prepare_folder, write_json_atomic
from gnconvert.errors import UsageError


class PartialResults:
    """Per-image records appended as JSON lines; every run (and rank) writes its own file.

    A run killed mid-write leaves at most one truncated last line, which loading skips.
    The first line fingerprints the run so a resume cannot mix two models' results.
    """

    def __init__(self, folder: Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self._file: Optional[TextIO] = None

    def clear(self) -> None:
        if self.folder.is_dir():
            for p in self.folder.glob("*.jsonl"):
                p.unlink()
            self.folder.rmdir()

    def load(self) -> Dict[int, dict]:
        done: Dict[int, dict] = {}
        if not self.folder.is_dir():
            return done
        for p in sorted(self.folder.glob("*.jsonl")):
            records = []
            for line in p.read_text().split("\n"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # the empty tail, or a line cut by a kill
            if not records:
                continue
            header = records[0].get("fingerprint")
            if header != self.fingerprint:
                raise UsageError(f"partial results in {self.folder} come from another run ({header}); "
                                 "use a different --output or run without --resume to start over")
            for r in records[1:]:
                done[int(r["image_id"])] = r
        return done

    def append(self, records: List[dict], rank: int) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"rank{rank}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._file = open(self.folder / name, "w")
            self._file.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        for r in records:
            self._file.write(json.dumps(r) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunFolder:
    def __init__(self, folder: Path, tool: str, fingerprint: dict, exclusive: bool,
                 final_files: tuple = ()):
        self.folder = Path(folder)
        self.tool = tool
        self.fingerprint = fingerprint
        self.exclusive = exclusive
        self.final_files = final_files  # what a run writes besides those its manifest lists
        self.manifest = self.folder / f".gnconvert-{tool}.json"
        self.partial = PartialResults(self.folder / "partial", fingerprint)
        self.created = False

    def claim(self, resume: bool, warn: Callable[[str], None]) -> Dict[int, dict]:
        """Make the folder this run's (main process only): -> the records of an earlier run to resume."""
        ours = self.manifest.is_file()
        if self.exclusive:
            if self.folder.is_dir() and any(self.folder.iterdir()) and not ours:
                raise UsageError(f"output folder {self.folder} is not empty and was not written by gnconvert "
                                 f"{self.tool}; choose a new or empty folder with -o")
            if resume and not ours:
                raise UsageError(f"nothing to resume in {self.folder}: no earlier gnconvert {self.tool} run there; "
                                 "drop --resume")
        self.created = not self.folder.exists()
        prepare_folder(self.folder)
        if resume:
            done = self.partial.load()
        else:
            done = {}
            if self.partial.folder.is_dir() and not self.exclusive:
                warn(f"gnconvert: warning: discarding the partial results of an earlier run in {self.partial.folder} "
                     "(pass --resume to continue it instead)")
            if ours:
                self._remove_previous()
            self.partial.clear()
        if self.exclusive:
            self._write_manifest([])
        return done

    def _remove_previous(self) -> None:
        """A new run into our own folder: the earlier run's files go, all of them."""
        try:
            previous = json.loads(self.manifest.read_text()).get("written", [])
        except (OSError, ValueError):
            previous = []
        for name in set(previous) | set(self.final_files):
            path = self.folder / name
            if path.parent == self.folder and path.is_file():
                path.unlink()

    def _write_manifest(self, written: List[str]) -> None:
        write_json_atomic(self.manifest, {"tool": f"gnconvert {self.tool}", "fingerprint": self.fingerprint,
                                          "written": written}, indent=1)

    def append(self, records: List[dict], rank: int = 0) -> None:
        try:
            self.partial.append(records, rank)
        except OSError as e:
            raise output_error(self.partial.folder, e) from None

    def finish(self, written: Optional[List[str]] = None) -> None:
        """The final files are written: record them (exclusive) and drop the partial records."""
        if self.exclusive:
            self._write_manifest(written or [])
        self.partial.close()
        self.partial.clear()

    def discard_if_empty(self) -> None:
        """A run that wrote no result leaves no folder it created."""
        self.partial.close()
        if self.created and not self.partial.load():
            shutil.rmtree(self.folder, ignore_errors=True)
