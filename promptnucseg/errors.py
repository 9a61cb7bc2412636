"""The one shape of an error a user can act on: which file, what is wrong, what to do.

`wsi_pipeline.errors.PipelineInputError`, `models.checkpoints.CheckpointError`,
`models.data.label_maps.LabelMapError` and `models.evaluation.cli_evaluate.EvaluationInputError`
derive from `FixableError`. It lives at the package root so that `models/` and
`wsi_pipeline/` share it without importing each other. The message is one line, printed by
the CLI without a traceback; the error pickles from its three parts, so it crosses from a
dask worker intact.
"""
from __future__ import annotations

from pathlib import Path


class FixableError(Exception):
    """`<path>: <problem>. Fix: <fix>` (no path: `<problem>. Fix: <fix>`)."""

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")

    def __reduce__(self) -> tuple:
        # rebuilt from its three parts (subclasses with other constructors override this)
        return (type(self), (self.path, self.problem, self.fix))
