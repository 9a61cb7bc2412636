"""Per-slide progress journal: what a killed run already finished, so a rerun resumes there.

Layout under a slide's output folder (names from outputs.py):
    .work/manifest.json   the run's fingerprint (slide, model, settings); a rerun with other
                          settings is refused rather than mixed into the same outputs
    .work/parts/NNNNNN.*  one file per finished batch of tiles, written atomically
    .work/progress.jsonl  one line per finished batch, appended and fsynced after its part
    .work/cells/NNNNNN.*  with --cell-expansion: each part's cells, made while finishing
    .work/staging/        the final outputs, written here first, then swapped in as a set
    .work/swap.json       written once the staged set is complete: the names to move; a run
                          killed while swapping is finished by the next one (`roll_forward`)
    .work/old/            the previous outputs, moved aside during the swap, then removed

A batch counts as done only when its line is in the journal and its part file exists, so
a kill at any instant loses at most the batches in flight. Lines cut short by a kill are
ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PipelineInputError
from .atomic import atomic_write_text
from .jail import require_inside
from .outputs import JOURNAL_MANIFEST, JOURNAL_PARTS, JOURNAL_PROGRESS, WORK_DIR

STAGING = "staging"
CELLS = "cells"  # --cell-expansion: the cells of each part, made while finishing (cells.py)
OLD = "old"
SWAP = "swap.json"
_PART = re.compile(r"^\.?\d{6}\.")  # a part file, or the hidden partial of one (atomic.partial_name)


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
        require_inside(self.folder, self.work, "the journal folder")
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

    def resumes(self, fingerprint: dict[str, Any]) -> bool:
        """True when the journal holds unfinished progress of a run with these settings."""
        try:
            old = json.loads((self.work / JOURNAL_MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(old, dict) and old.get("hash") == fingerprint_hash(fingerprint)

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

    @property
    def active(self) -> bool:
        """A run's journal is here (a manifest or a swap list), not merely a `.work` folder that
        holds someone else's files after a cleanup."""
        return (self.work / JOURNAL_MANIFEST).is_file() or (self.work / SWAP).is_file()

    @property
    def staging(self) -> Path:
        return self.work / STAGING

    def clear(self) -> list[Path]:
        """Forget all progress (for --overwrite, or once the final outputs are written).

        Removes only what the journal itself writes (its manifest, progress, part files,
        staging and swap folders); anything else found in `.work` (a user's file) stays, and
        is returned. A `.work` that is a symlink or lies outside the slide folder is refused."""
        if not os.path.lexists(self.work):
            return []
        require_inside(self.folder, self.work, "the journal folder")
        if self.work.is_symlink():
            raise PipelineInputError(self.work, "is a symbolic link, not the journal promptnucseg made", "remove the link; promptnucseg deletes only what it wrote inside --out")
        for name in (STAGING, OLD, CELLS):
            _remove_tree(self.work / name)
        if self.parts_dir.is_dir() and not self.parts_dir.is_symlink():
            for f in self.parts_dir.iterdir():
                if _PART.match(f.name) and (f.is_file() or f.is_symlink()):
                    f.unlink()
        for name in (JOURNAL_MANIFEST, JOURNAL_PROGRESS, SWAP):
            (self.work / name).unlink(missing_ok=True)
        for f in self.work.glob(".*.partial-*"):  # a manifest or swap list cut short by a kill
            if f.is_file():
                f.unlink()
        kept = []
        for folder in (self.parts_dir, self.work):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                kept += [p for p in folder.iterdir() if p != self.parts_dir]
        return kept

    def clear_staging(self) -> None:
        """Drop a staging folder left by a run killed while exporting (before its swap)."""
        require_inside(self.folder, self.staging, "the staging folder")
        _remove_tree(self.staging)

    # ----- the staged outputs, swapped in as a set ------------------------------------------
    def swap_in(self, new: list[str], old: list[str]) -> None:
        """Move the staged outputs `new` (file names in `staging/`) into the slide folder,
        replacing the previous outputs `old`, so that the folder never shows a finished report
        beside a mix: the list is written first (a killed swap is finished by `roll_forward`),
        the old report leaves first and the new report (last in `new`) comes in last."""
        atomic_write_text(self.work / SWAP, json.dumps({"new": new, "old": old}))
        self.roll_forward()

    def roll_forward(self) -> bool:
        """Finish a swap that was started (a no-op without `swap.json`); True if there was one."""
        listed = self.work / SWAP
        if not listed.is_file():
            return False
        names = json.loads(listed.read_text())
        aside = self.work / OLD
        aside.mkdir(exist_ok=True)
        new = [Path(n).name for n in names["new"]]
        for name in dict.fromkeys([Path(n).name for n in names["old"]] + new):  # the old report first
            target = self.folder / name
            if not os.path.lexists(target):
                continue
            if name not in new or os.path.lexists(self.staging / name):  # not yet replaced by its new self
                os.replace(target, aside / name)
        for name in new:
            staged = self.staging / name
            if os.path.lexists(staged):
                os.replace(staged, self.folder / staged.name)
        from .atomic import fsync_folder

        fsync_folder(self.folder)
        return True


def _remove_tree(path: Path) -> None:
    """Remove a folder the journal made (staging/, old/): its contents are the pipeline's own."""
    import shutil

    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
