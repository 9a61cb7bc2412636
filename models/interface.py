"""The one narrow seam between `models/` and `wsi_pipeline/`: an RGB tile in, nuclei out.

`wsi_pipeline` imports nothing from `models` but this module. It knows that a predictor
wants uint8 RGB tiles at `facts().mpp` microns per pixel and answers with a
`TileNuclei` per tile; everything about prompters, SAM and checkpoints stays behind it.
The pixel rule that makes such tiles (`to_rgb_uint8`, in `pixels.py`) is the one training
images follow too. What the pipeline must know of a model (scale, windows, tile alignment,
classes and colours, plausible figures, whether tiles can reproduce one pass) is `ModelFacts`,
and the pipeline reads it from there only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .facts import (  # noqa: F401  (re-exported: what the pipeline knows of a model)
    DEFAULT_WINDOW_BATCH, MODEL_FREE_MPP, RELEASE_PRESETS, TILE_ALIGN, ModelFacts, NucleusRanges, Palette, hex_color,
)
from .pixels import to_rgb_uint8  # noqa: F401  (the one pixel rule, for wsi_pipeline's readers)
from .tiles import (  # noqa: F401  (re-exported: the tile-level types of the seam)
    ClickedRegion, GivenPrompts, TileNuclei, TileTissue, WindowCounts, span_shares, span_starts,
)


@runtime_checkable
class NucleusPredictor(Protocol):
    """What the whole-slide pipeline needs of a model, and nothing more."""

    device: str

    def facts(self) -> ModelFacts:
        """The model's facts (scale, windows, classes, ranges, seamlessness) and its description."""
        ...

    def predict(self, tiles: Sequence[np.ndarray], prompts: Sequence[GivenPrompts | None] | None = None,
                tissue: Sequence[TileTissue | None] | None = None) -> list[TileNuclei]:
        """Nuclei of each uint8 RGB (H, W, 3) tile; any H, W >= 1. `prompts`: per tile, given
        points (or None: the prompter's alone). `tissue`: per tile, where it has tissue (or
        None: everywhere); windows without any are not run, and a predictor that counts them
        keeps the counts in an optional `windows: WindowCounts` attribute."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for run reports: model name, weights file and hash, config."""
        ...


def load_predictor(weights: str | None = None, device: str = "auto", **options: Any) -> NucleusPredictor:
    """The bundled default (no `weights`), a bundled model by name (`default`, `typed`) or a
    checkpoint file, ready to `predict` tiles.

    Imported lazily so that `wsi_pipeline` can import this module without torch.
    """
    from .loading import load_predictor as _load

    return _load(weights=weights, device=device, **options)


@dataclass
class AdaptableModel:
    """What the pipeline must know of a model before it cuts regions for `adapt_model`."""

    path: str
    sha256: str
    mpp: float
    class_names: tuple[str, ...]
    source: Any = field(default=None, repr=False, compare=False)  # the file as read, so `adapt_model` reads it once


def adaptable_model(model: str | None = None) -> AdaptableModel:
    """The bundled default, a bundled name or a model file, checked to hold a prompter to adapt."""
    from .adaptation import open_source_model

    src = open_source_model(model)
    return AdaptableModel(str(src.path), src.sha256, src.mpp, src.class_names, src)


def adapt_model(model: "str | None | AdaptableModel", regions: Sequence[ClickedRegion], out: str, **options: Any) -> tuple[dict[str, Any], bool]:
    """Fine-tune the model's prompter on the regions' clicks and write the adapted model file to
    `out` unless it did worse on the held-out clicks (`force=True` writes it anyway). `model`: a
    bundled name, a model file, or `adaptable_model`'s answer (then not read again). Options:
    minutes, max_steps, seed, force, progress, state_path, fingerprint, provenance, device.
    Returns (the adaptation's report, written)."""
    from pathlib import Path

    from .adaptation import AdaptSettings, adapt_model as _adapt, open_source_model

    settings = AdaptSettings(**{k: options.pop(k) for k in ("minutes", "max_steps", "seed") if k in options})
    state = options.pop("state_path", None)
    source = model.source if isinstance(model, AdaptableModel) and model.source is not None else open_source_model(model)
    outcome, written = _adapt(source, regions, settings, Path(out), state_path=Path(state) if state else None, **options)
    return {"settings": settings.to_dict(), **outcome.report()}, written


def bundled_model_names() -> tuple[str, ...]:
    """The names `--model` takes for the bundled models (`promptnucseg models`); a name wins over
    a file of the same name, so a path-like value is only made absolute when it is not one."""
    from .bundled import BUNDLED

    return tuple(BUNDLED)


def weights_licence(model_name: str) -> str:
    """The licence of a named model's weights (run reports that do not carry one: models/bundled.py)."""
    from .bundled import weights_licence as licence

    return licence(model_name)
