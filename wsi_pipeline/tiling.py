"""The tile grid over a slide, and each tile's core (the box whose prompts it owns).

Everything here is in *model pixels* (the slide resampled to the model's microns per
pixel), with the origin at the region's top-left corner. Tiles start on multiples of
`align` (the prompter's anchor/stride period), so neighbouring tiles place their anchors
at the same slide positions and predict the same prompt for a nucleus they both see.
The last tile in a row or column is cut short at the region's edge rather than moved
back, which would break that alignment.

The model itself looks at a tile through fixed windows (crops of its window size at a fixed step,
for prompter and segmentor alike), and a nucleus' prompt and mask shift a little when its window
moves. Given the model's
`window_grid` (window, step), tiles also step by a multiple of the window step, so every tile
holds whole windows of one region-wide window grid; when the tile size fits that grid and the
overlap keeps each core clear of windows the tile cannot see (`seamless`), a tiled run gives
each nucleus the same windows, hence the same mask, as one pass over the whole region.

Cores: between two neighbouring tiles, the boundary sits in the middle of their overlap.
A tile's *core* is the box between its boundaries (open to infinity at the region's edges),
so the cores partition the plane; `stitch.py` applies the ownership rule on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from promptnucseg.models.interface import TILE_ALIGN, span_shares, span_starts

# The tile defaults (`--tile-size`, `--overlap`, `SegmentSettings`), written here only: 1024 is whole
# windows of the bundled models' window grid, and 128 px (32 um at their scale) exceeds the largest nucleus.
DEFAULT_TILE_SIZE = 1024
DEFAULT_OVERLAP = 128


@dataclass(frozen=True)
class Tile:
    index: int  # row-major over the full grid (stable across runs and workers)
    row: int
    col: int
    x: int  # model-pixel box of the tile: [x, x + w) x [y, y + h)
    y: int
    w: int
    h: int
    core: tuple[float, float, float, float]  # x0, y0, x1, y1; +-inf at the region's edges

    def owns(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Which of the points (model pixels, region frame) fall in this tile's core."""
        x0, y0, x1, y1 = self.core
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


@dataclass(frozen=True)
class TileGrid:
    width: int  # region size in model pixels
    height: int
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP  # the least overlap: the step is rounded down to `period`
    align: int = TILE_ALIGN
    window_grid: tuple[int, int] | None = None  # the model's (window, window step), model px
    # whether the model's windows follow the span rule under its settings (`ModelFacts.seamless_windows`);
    # a model that prompts whole tiles or moves the last window flush is never seamless, whatever the grid
    seamless_windows: bool = True

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty region ({self.width}x{self.height} model px)")
        if self.tile_size % self.align:
            raise ValueError(f"--tile-size {self.tile_size} must be a multiple of {self.align}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"--overlap {self.overlap} must be >= 0 and smaller than --tile-size {self.tile_size}")

    @property
    def period(self) -> int:
        """What tile starts are multiples of: the prompter's alignment and the window step."""
        return math.lcm(self.align, self.window_grid[1]) if self.window_grid else self.align

    @property
    def stride(self) -> int:
        """Tile step: tile - overlap, rounded down to the period."""
        return max(self.period, (self.tile_size - self.overlap) // self.period * self.period)

    @property
    def real_overlap(self) -> int:
        """The overlap the tiles actually have once the step is rounded down."""
        return self.tile_size - self.stride

    @property
    def seamless(self) -> bool:
        """True when tiles see each owned nucleus through the same windows as one whole pass.

        Needs a model whose windows follow the span rule (`seamless_windows`), the tile to be whole windows on the grid (tile = window + n * step) and half the
        real overlap to cover the windows' own overlap, so no window reaching into a core is
        missing from the tile that owns the core.
        """
        if not self.window_grid or not self.seamless_windows:
            return False
        window, step = self.window_grid
        tile = self.tile_size
        return tile >= window and (tile - window) % step == 0 and self.real_overlap >= 2 * (window - step)

    @property
    def xs(self) -> list[int]:
        return span_starts(self.width, self.tile_size, self.stride)

    @property
    def ys(self) -> list[int]:
        return span_starts(self.height, self.tile_size, self.stride)

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def indices_owning(self, xs: np.ndarray, ys: np.ndarray, margin: float = 1.0) -> set[int]:
        """Indices of the tiles whose core, widened by `margin` px, holds any of the points."""
        inner_x = np.asarray(span_shares(self.xs, self.tile_size)[1:-1])
        inner_y = np.asarray(span_shares(self.ys, self.tile_size)[1:-1])
        ncols = len(self.xs)
        c0, c1 = np.searchsorted(inner_x, xs - margin, "right"), np.searchsorted(inner_x, xs + margin, "right")
        r0, r1 = np.searchsorted(inner_y, ys - margin, "right"), np.searchsorted(inner_y, ys + margin, "right")
        return {int(r * ncols + c) for a, b, e, f in zip(c0, c1, r0, r1) for r in range(e, f + 1) for c in range(a, b + 1)}

    def __iter__(self) -> Iterator[Tile]:
        xs, ys = self.xs, self.ys
        bx, by = span_shares(xs, self.tile_size), span_shares(ys, self.tile_size)
        for r, y in enumerate(ys):
            for c, x in enumerate(xs):
                yield Tile(
                    index=r * len(xs) + c,
                    row=r,
                    col=c,
                    x=x,
                    y=y,
                    w=min(self.tile_size, self.width - x),
                    h=min(self.tile_size, self.height - y),
                    core=(bx[c], by[r], bx[c + 1], by[r + 1]),
                )
