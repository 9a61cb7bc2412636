"""Errors a user can act on: each names the file and says what to do about it."""
from __future__ import annotations

from pathlib import Path


class PipelineInputError(Exception):
    """Bad input (slide, image, resolution, output folder, weights) the user can fix.

    The message is one line: what is wrong with which file, then the fix. The CLI prints
    it without a traceback and exits non-zero; other slides of the run go on.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")

    def __reduce__(self) -> tuple:
        # rebuilt from its three parts, so it survives pickling from a dask worker
        return (type(self), (self.path, self.problem, self.fix))
