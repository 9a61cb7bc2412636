"""Model files adapted from a person's clicks: the source model's file with a fine-tuned prompter.

The segmentor is not touched by adaptation, so an adapted file copies nothing of it when the
source is a bundled model: it refers to the bundled file's segmentor by name and sha256
(`segmentor_ref` with `bundled: true`, found in the installed weights folder), as the typed
model does. A source that is a user's file gives a self-contained file (its segmentor copied),
since a path on one machine means nothing on another.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundled import resolve_model
from .checkpoints import CheckpointError, file_sha256, half_state, read_checkpoint, save_checkpoint
from .devices import resolve_device
from .tiles import ClickedRegion
from .training.adapt import AdaptOutcome, AdaptSettings, Progress, adapt_prompter

__all__ = ["AdaptSettings", "ClickedRegion", "SourceModel", "adapt_model", "open_source_model"]


@dataclass
class SourceModel:
    """The model a person adapts: its file, hash, classes and microns per pixel."""

    path: Path
    sha256: str
    bundled_name: str | None
    mpp: float
    class_names: tuple[str, ...]
    ckpt: dict


def open_source_model(model: str | Path | None) -> SourceModel:
    """Check before any slide is read that `model` is a model file with a prompter to adapt."""
    path, bundled_name = resolve_model(model)
    ckpt = read_checkpoint(path)
    if ckpt.get("format") != "promptnucseg" or ckpt.get("kind") != "model" or "prompter" not in ckpt:
        raise CheckpointError(
            path, "is not a promptnucseg model file with a prompter (a segmentor or SAM file alone has nothing to adapt)",
            "pass --model default, --model typed, or a model file from export-model / import-release / adapt",
        )
    config = ckpt["config"]
    return SourceModel(path, file_sha256(path), bundled_name, float(config["mpp"]), tuple(config["class_names"]), ckpt)


def adapt_model(
    source: SourceModel, regions: Sequence[ClickedRegion], settings: AdaptSettings, out: Path, *, force: bool = False,
    progress: Progress | None = None, state_path: Path | None = None, fingerprint: str = "", provenance: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[AdaptOutcome, bool]:
    """Fine-tune the source's prompter on the regions; write `out` unless the held-out F1 fell
    (then only with `force`). Returns (outcome, written)."""
    from .loading import _load_bundle
    from .predictor import PromptNucSegPredictor

    prompter, segmentor, config, _ = _load_bundle(source.path, source.ckpt)
    predictor = PromptNucSegPredictor(prompter, segmentor, config, resolve_device(device))

    def finder(p: torch.nn.Module) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def find(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            predictor.prompter = p
            with torch.inference_mode():
                found = predictor._prompts([image], [None])[0]
            return np.asarray(found.points, np.float64).reshape(-1, 2), np.asarray(found.scores, np.float64).reshape(-1)

        return find

    outcome = adapt_prompter(prompter, finder, regions, settings, progress, state_path, fingerprint)
    worse = outcome.after.f1 < outcome.before.f1
    if worse and not force:
        return outcome, False
    _write(source, outcome, out, {**(provenance or {}), "settings": settings.to_dict(), **outcome.report()})
    return outcome, True


def _write(source: SourceModel, outcome: AdaptOutcome, out: Path, adaptation: dict[str, Any]) -> None:
    ckpt = source.ckpt
    if source.bundled_name is not None:
        seg_part: dict[str, Any] = {"segmentor_ref": _bundled_ref(source)}
    elif "segmentor" in ckpt:
        seg_part = {"segmentor": ckpt["segmentor"]}
    else:
        from .loading import shared_segmentor

        seg_part = {"segmentor": shared_segmentor(source.path, ckpt)[0]}
    metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "validation"}
    adaptation = {**adaptation, "source_model": {"file": source.path.name, "sha256": source.sha256, "bundled": source.bundled_name}}
    save_checkpoint(out, {"kind": "model", "config": ckpt["config"], "prompter": half_state(outcome.state_dict), **seg_part, "metrics": metrics, "adaptation": adaptation})


def _bundled_ref(source: SourceModel) -> dict[str, Any]:
    """Where the bundled source's segmentor lives: in it, or in the bundled file it refers to."""
    ref = source.ckpt.get("segmentor_ref")
    if ref is None:
        return {"file": source.path.name, "sha256": source.sha256, "part": "segmentor", "bundled": True}
    return {**ref, "bundled": True}

