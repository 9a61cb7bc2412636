"""Per-slide progress journal: what a killed run already finished, so a rerun resumes there.

Layout under a slide's output folder (names from outputs.py):
    .work/manifest.json   the run's fingerprint (slide, model, settings); a rerun with other
                          settings is refused rather than mixed into the same outputs
    .work/parts/NNNNNN.*  one file per finished batch of tiles, written atomically
    .work/progress.jsonl  one line per finished batch, appended and fsynced after its part

A batch counts as done only when its line is in the journal and its part file exists, so
a kill at any instant loses at most the batches in flight. Lines cut short by a kill are
ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PipelineInputError
from .atomic import atomic_write_text
from .outputs import JOURNAL_MANIFEST, JOURNAL_PARTS, JOURNAL_PROGRESS, WORK_DIR


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def quick_file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """Size + first and last MiB: identifies a slide without reading gigabytes."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(size - chunk, chunk))
            h.update(fh.read(chunk))
    return h.hexdigest()[:16]


@dataclass
class Journal:
    folder: Path  # the slide's output folder

    @property
    def work(self) -> Path:
        return self.folder / WORK_DIR

    @property
    def parts_dir(self) -> Path:
        return self.work / JOURNAL_PARTS

    @property
    def progress_path(self) -> Path:
        return self.work / JOURNAL_PROGRESS

    def part_path(self, batch: int, suffix: str = ".npz") -> Path:
        return self.parts_dir / f"{batch:06d}{suffix}"

    def start(self, fingerprint: dict[str, Any]) -> bool:
        """Create or reopen the journal; True if earlier progress is being resumed."""
        manifest = self.work / JOURNAL_MANIFEST
        digest = fingerprint_hash(fingerprint)
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            if old.get("hash") != digest:
                changed = sorted(k for k in set(old.get("fingerprint", {})) | set(fingerprint) if old.get("fingerprint", {}).get(k) != fingerprint.get(k))
                raise PipelineInputError(
                    self.folder,
                    f"holds an unfinished run with other settings (changed: {', '.join(changed) or 'unknown'})",
                    "rerun with the same settings to resume, use another --out, or pass --overwrite to start again",
                )
            return True
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest, json.dumps({"hash": digest, "fingerprint": fingerprint}, indent=1, default=str))
        return False

    def done(self) -> dict[int, dict[str, Any]]:
        """Finished batches (index -> its journal record)."""
        if not self.progress_path.is_file():
            return {}
        out: dict[int, dict[str, Any]] = {}
        with open(self.progress_path) as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and "batch" in rec and rec.get("part") and (self.parts_dir / rec["part"]).is_file():
                    out[int(rec["batch"])] = rec
        return out

    def record(self, batch: int, part: Path, info: dict[str, Any]) -> None:
        """Append a finished batch; call only after its part file is safely on disk."""
        line = json.dumps({"batch": batch, "part": part.name, **info}) + "\n"
        with open(self.progress_path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def parts_in_order(self) -> list[Path]:
        """Finished parts sorted by batch index: the order final outputs are written in."""
        done = self.done()
        return [self.parts_dir / done[b]["part"] for b in sorted(done)]

    def bytes_on_disk(self) -> int:
        """Bytes the journal already holds (they count as written when checking free space)."""
        if not self.parts_dir.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.parts_dir.iterdir() if f.is_file())

    def clear(self) -> None:
        """Forget all progress (for --overwrite, or once the final outputs are written)."""
        shutil.rmtree(self.work, ignore_errors=True)
