"""What the pipeline must know of a model: `ModelFacts` (re-exported by `interface.py`, the seam).

Defined below the seam so that the predictor can state its facts without importing
`interface` (which loads `loading` -> `predictor`: an import cycle otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .plausibility import NucleusRanges


# Tiles start on multiples of this (with the window step: `tiling.TileGrid.period`): the prompters'
# coarsest feature stride, so neighbouring tiles place their anchors at the same slide positions.
TILE_ALIGN = 32
# The data sets whose PromptNucSeg release settings a run can take (`--preset`: models/release.py).
RELEASE_PRESETS = ("kumar", "cpm17", "pannuke")
# Windows per forward pass of each network unless a run asks otherwise (`--window-batch`); a
# predictor's `describe()` names its window batch only when it is another.
DEFAULT_WINDOW_BATCH = 8
# What the model-free checks (before any model loads: a slide too small to hold a nucleus)
# assume of a model's scale; the bundled models' µm/px. The plan checks again with the model's.
MODEL_FREE_MPP = 0.25


def hex_color(rgb: Sequence[int]) -> str:
    """#rrggbb of an (r, g, b) colour (scanpy's and squidpy's spelling)."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


@dataclass(frozen=True)
class Palette:
    """A model's classes, each with its colour: one object, so names and colours cannot drift apart."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in self.colors))
        if len(self.colors) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        bad = [c for c in self.colors if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
        if bad:
            raise ValueError(f"class colours must be (r, g, b) in 0..255, not {bad[0]}")

    def __len__(self) -> int:
        return len(self.names)

    def extended(self, names: Sequence[str], colors: Sequence[Sequence[int]]) -> "Palette":
        """This palette, then more classes (a points file's own classes)."""
        return Palette((*self.names, *names), (*self.colors, *(tuple(c) for c in colors)))  # type: ignore[arg-type]

    def hex_colors(self) -> tuple[str, ...]:
        return tuple(hex_color(c) for c in self.colors)


@dataclass(frozen=True)
class ModelFacts:
    """What the pipeline must know of a model, and all it may know: planning, tiling, the
    fingerprint, the exports and the report's checks read this, never a model's name or constants.

    Picklable and without weights, so a distributed run's client can hold it while only the
    workers load the networks; `describe()` is the predictor's JSON description for reports.
    """

    mpp: float  # microns per pixel the model works at; tiles come at this scale
    palette: Palette
    window: int  # the model sees a tile through `window`-px windows ...
    window_step: int  # ... at multiples of this step (the last reaching past the tile, padded)
    # True when the windows (prompter's and segmentor's) follow the span rule, so tiles laid on
    # the window grid reproduce a one-pass run; False under settings that tie windows to where a
    # tile ends (the release's `last_window_flush`) or prompt a whole tile at once
    seamless_windows: bool
    ranges: NucleusRanges = field(default_factory=NucleusRanges)
    tile_align: int = TILE_ALIGN
    description: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def window_grid(self) -> tuple[int, int]:
        return self.window, self.window_step

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.palette.names

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        return self.palette.colors

    def describe(self) -> dict[str, Any]:
        return self.description

    @classmethod
    def of(cls, predictor: Any) -> "ModelFacts":
        """A predictor's facts (`interface.NucleusPredictor.facts`)."""
        return predictor.facts()
