"""Which model a run loads and how it runs it: one `ModelSpec`, built from the `segment` flags
(`from_flags`) and loaded the same way by the CLI, a dask worker and the Python API.

Two batch sizes, kept apart because they are two things: `--batch-size` is tiles per journaled
batch (`SegmentSettings.batch_size`: the part a resume and a distributed task count in; the
runner hands the model one tile at a time), `--window-batch` is windows per forward pass of each
network (here: the predictor's `batch_size`). The window batch follows `--batch-size` unless
given, which is what `--batch-size` alone set before the two were told apart.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from promptnucseg.models.interface import NucleusPredictor, bundled_model_names

DEFAULT_BATCH_SIZE = 8  # tiles per journaled batch (--batch-size), and the window batch it implies


@dataclass(frozen=True)
class ModelSpec:
    """How to load a predictor; picklable and hashable (a worker's and the API's cache key)."""

    weights: str | None = None  # None: the bundled default; a bundled name or a model file
    prompter_weights: str | None = None
    device: str = "auto"  # auto | cpu | cuda[:N]; a dask worker with CUDA picks its own GPU
    window_batch: int = DEFAULT_BATCH_SIZE  # windows per forward pass of each network
    preset: str | None = None  # the PromptNucSeg release's settings to run with (models/release.py)
    tta: bool = False  # test-time augmentation
    expected_sha256: str | None = None  # weights every dask worker must load (set from the first load)

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> "ModelSpec":
        """The spec the `segment` flags ask for (`--window-batch` defaults to `--batch-size`)."""
        window_batch = getattr(args, "window_batch", None)
        return cls(
            args.weights, args.prompter_weights, args.device, args.batch_size if window_batch is None else window_batch,
            preset=args.preset, tta=args.tta,
        )

    def absolute(self) -> "ModelSpec":
        """Workers may run elsewhere, in another folder: give them absolute paths (a bundled
        model's name stays a name)."""
        names = bundled_model_names()
        resolve = lambda p: p if p is None or p in names else str(Path(p).expanduser().absolute())  # noqa: E731
        return replace(self, weights=resolve(self.weights), prompter_weights=resolve(self.prompter_weights))

    @property
    def key(self) -> tuple:
        """What makes two specs load the same networks the same way (not the expected hash)."""
        return self.weights, self.prompter_weights, self.device, self.window_batch, self.preset, self.tta

    def load(self, device: str | None = None) -> NucleusPredictor:
        """The predictor, on `device` when given (a dask worker's own GPU), else on the spec's."""
        from promptnucseg.models.interface import load_predictor

        return load_predictor(
            self.weights, device=device or self.device, prompter_weights=self.prompter_weights, batch_size=self.window_batch,
            preset=self.preset, tta=self.tta,
        )
