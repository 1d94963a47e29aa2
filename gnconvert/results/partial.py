"""Per-image results saved as a run goes, so an interrupted `verify` resumes where it stopped."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Dict, List, Optional, TextIO

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
            with open(p) as f:
                lines = f.read().split("\n")
            records = []
            for line in lines:
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
