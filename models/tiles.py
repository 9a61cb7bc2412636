"""What a tile carries across the seam, both ways: nuclei found, points given, tissue under it,
windows counted, a clicked region, and the span rule that lays windows on tiles and tiles on slides.

Plain data and arithmetic, no torch: `predictor.py` and `adaptation.py` import them from here and
`interface.py` re-exports them to `wsi_pipeline/`, so no module behind the seam imports the seam
back (`interface` loads `loading` -> `predictor` lazily; they must not need `interface`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


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
