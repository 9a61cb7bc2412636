"""The one narrow seam between `models/` and `wsi_pipeline/`: an RGB tile in, nuclei out.

`wsi_pipeline` imports nothing from `models` but this module. It knows that a predictor
wants uint8 RGB tiles at `predictor.mpp` microns per pixel and answers with a
`TileNuclei` per tile; everything about prompters, SAM and checkpoints stays behind it.
The pixel rule that makes such tiles (`to_rgb_uint8`, in `pixels.py`) is the one training
images follow too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .pixels import to_rgb_uint8  # noqa: F401  (the one pixel rule, for wsi_pipeline's readers)


@dataclass
class TileNuclei:
    """Nuclei found on one tile, stored column-wise so millions of them stay cheap.

    Coordinates are tile pixels, x to the right and y down. `masks[i]` covers
    `boxes[i]` = (x0, y0, x1, y1) with x1/y1 exclusive, so its shape is (y1-y0, x1-x0).
    `classes` index into the predictor's `class_names`.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int16))
    class_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    mask_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    masks: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, np.float32).reshape(-1, 2)
        self.classes = np.asarray(self.classes, np.int16).reshape(-1)
        self.class_scores = np.asarray(self.class_scores, np.float32).reshape(-1)
        self.mask_scores = np.asarray(self.mask_scores, np.float32).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.int32).reshape(-1, 4)
        n = len(self.points)
        sizes = {len(self.classes), len(self.class_scores), len(self.mask_scores), len(self.boxes), len(self.masks)}
        if sizes != {n}:
            raise ValueError(f"TileNuclei columns disagree in length: points={n}, others={sorted(sizes)}")
        for m, (x0, y0, x1, y1) in zip(self.masks, self.boxes):
            if m.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"mask of shape {m.shape} does not fit its box {(x0, y0, x1, y1)}")

    def __len__(self) -> int:
        return len(self.points)

    def select(self, index: np.ndarray | Sequence[int]) -> "TileNuclei":
        """A subset (boolean mask or integer indices), in the given order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return TileNuclei(
            points=self.points[idx],
            classes=self.classes[idx],
            class_scores=self.class_scores[idx],
            mask_scores=self.mask_scores[idx],
            boxes=self.boxes[idx],
            masks=[self.masks[i] for i in idx],
        )

    @staticmethod
    def concatenate(parts: Sequence["TileNuclei"]) -> "TileNuclei":
        parts = [p for p in parts if len(p)]
        if not parts:
            return TileNuclei()
        return TileNuclei(
            points=np.concatenate([p.points for p in parts]),
            classes=np.concatenate([p.classes for p in parts]),
            class_scores=np.concatenate([p.class_scores for p in parts]),
            mask_scores=np.concatenate([p.mask_scores for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]),
            masks=[m for p in parts for m in p.masks],
        )

    def shifted(self, dx: int, dy: int) -> "TileNuclei":
        """The same nuclei in a frame whose origin is (-dx, -dy) of this one's."""
        return TileNuclei(
            points=self.points + np.array([dx, dy], np.float32),
            classes=self.classes,
            class_scores=self.class_scores,
            mask_scores=self.mask_scores,
            boxes=self.boxes + np.array([dx, dy, dx, dy], np.int32),
            masks=self.masks,
        )

    def label_maps(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Paint an instance label map (1..N) and a class map (class index + 1, 0 = none).

        Masks are painted in ascending mask score, so a higher score wins an overlap
        (the release's rule). Label i+1 is nucleus i of this object.
        """
        h, w = shape
        inst = np.zeros((h, w), np.int32)
        cls = np.zeros((h, w), np.int16)
        for i in np.argsort(self.mask_scores, kind="stable"):
            x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            m = self.masks[i][cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            inst[cy0:cy1, cx0:cx1][m] = i + 1
            cls[cy0:cy1, cx0:cx1][m] = int(self.classes[i]) + 1
        return inst, cls


@dataclass
class GivenPrompts:
    """Points a person placed on one tile, segmented as given instead of (or besides) the prompter's.

    `points` are tile pixels in `TileNuclei.points`' convention; each one that yields a mask comes
    back as a nucleus whose point is the given point, unchanged, so the caller can tell which did.
    `classes` index into the caller's class list, which starts with the predictor's `class_names`
    (a person's class need not be one the model knows). `mode`: "only" skips the prompter; "add"
    keeps its points except those within its point-NMS radius of a given point.
    """

    points: np.ndarray
    classes: np.ndarray
    mode: str = "only"

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, np.float32).reshape(-1, 2)
        self.classes = np.asarray(self.classes, np.int16).reshape(-1)
        if len(self.classes) != len(self.points):
            raise ValueError(f"GivenPrompts: {len(self.points)} points but {len(self.classes)} classes")
        if self.mode not in ("only", "add"):
            raise ValueError(f"GivenPrompts mode must be 'only' or 'add', not {self.mode!r}")


@dataclass
class ClickedRegion:
    """A region a person clicked completely (one point on every nucleus in it), cut from a slide
    at the model's microns per pixel, for `adapt_model`: outside `inside` nothing is known."""

    name: str
    image: np.ndarray  # uint8 (H, W, 3)
    inside: np.ndarray  # bool (H, W)
    points: np.ndarray  # float32 (N, 2) (x, y) in `TileNuclei.points`' convention
    classes: np.ndarray  # int64 (N,) into the model's class_names


@dataclass(frozen=True)
class TileTissue:
    """Where a tile has tissue, coarse, so a predictor can leave windows of bare glass unrun.

    Cell (r, c) covers tile pixels [x + c * cell, x + (c + 1) * cell) across and the same down
    from y; cells only partly on the tile count whole (the pipeline's tissue mask is generous:
    a window wrongly run costs time, one wrongly skipped loses nuclei).
    """

    cells: np.ndarray  # bool (rows, cols)
    cell: float  # tile px per cell side
    x: float = 0.0  # tile px of cell (0, 0)'s top-left corner
    y: float = 0.0

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether any tissue cell touches the tile-pixel box [x0, x1) x [y0, y1)."""
        rows, cols = self.cells.shape
        e = 1e-6  # a box edge on a cell edge, up to rounding, takes that cell too: err towards running
        c0, c1 = max(0, math.floor((x0 - self.x) / self.cell - e)), min(cols, math.ceil((x1 - self.x) / self.cell + e))
        r0, r1 = max(0, math.floor((y0 - self.y) / self.cell - e)), min(rows, math.ceil((y1 - self.y) / self.cell + e))
        return c1 > c0 and r1 > r0 and bool(self.cells[r0:r1, c0:c1].any())


@dataclass
class WindowCounts:
    """A predictor's windows so far: run, and skipped for holding no tissue (`TileTissue`)."""

    run: int = 0
    skipped: int = 0


def span_starts(length: int, size: int, step: int) -> list[int]:
    """Origins of spans of `size` every `step` covering [0, length); the last reaches past the end.

    The model lays its windows over a tile this way and the pipeline lays its tiles over a
    slide this way: both sides must share the rule, or a tile and the whole slide would see a
    nucleus through different windows. A span is never moved flush with the end, because its
    place would then depend on where the image stops.
    """
    return list(range(0, length - size + step, step)) if length > size else [0]


def span_shares(starts: list[int], size: int) -> list[float]:
    """Where each span's share of the line ends: the middle of each overlap, open at both ends."""
    inner = [(starts[k + 1] + starts[k] + size) / 2 for k in range(len(starts) - 1)]
    return [-math.inf, *inner, math.inf]


@runtime_checkable
class NucleusPredictor(Protocol):
    """What the whole-slide pipeline needs of a model, and nothing more."""

    mpp: float  # microns per pixel the model was trained at; tiles must come at this scale
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    device: str
    # (window, step): the model sees a tile through `window`-px windows at multiples of `step`
    # (the last reaching past the tile, padded); tiles laid on that grid reproduce a whole-image pass
    window_grid: tuple[int, int]

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

