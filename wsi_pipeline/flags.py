"""Argparse types for the numeric flags of `segment`: a bad value exits 2 at parse time.

Why: a `--batch-size 0` used to fail per slide after the model had loaded (range() arg 3
must not be zero), `--tile-size 0` blamed `--overlap`; every flag now names itself and its
valid range before anything heavy happens. The ranges live here and nowhere else.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

from promptnucseg.models.interface import TILE_ALIGN  # tile sizes sit on the prompters' grid (tiling.TileGrid.align)

# Larger tiles buy nothing (the model sees a tile through small windows anyway) and a tile of
# 16384^2 px is already 0.8 GB of RGB before the model copies it; preflight also bounds it by RAM.
TILE_MAX = 16384


@dataclass(frozen=True)
class IntRange:
    """An integer flag's valid values: low..high, optionally a multiple of `multiple`."""

    flag: str
    low: int
    high: int
    multiple: int = 1
    why: str = ""

    def describe(self) -> str:
        grid = f", a multiple of {self.multiple}" if self.multiple > 1 else ""
        return f"an integer {self.low}..{self.high}{grid}{f' ({self.why})' if self.why else ''}"

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use {self.describe()}") from None
        if not self.low <= value <= self.high or value % self.multiple:
            hint = ""
            if self.multiple > 1 and self.low <= value <= self.high:
                down = max(self.low, value // self.multiple * self.multiple)
                hint = f", e.g. {down}"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {self.describe()}{hint}")
        return value


BATCH_SIZE = IntRange("--batch-size", 1, 1024)
WINDOW_BATCH = IntRange("--window-batch", 1, 1024)
WORKERS = IntRange("--workers", 1, 256)
TILE_SIZE = IntRange("--tile-size", 64, TILE_MAX, TILE_ALIGN, "the prompter's anchor grid; larger tiles gain nothing")
OVERLAP = IntRange("--overlap", 0, TILE_MAX - TILE_ALIGN, why="and smaller than --tile-size")


def positive_finite(flag: str) -> Callable[[str], float]:
    """A float flag that must be a finite number > 0 (rejects nan, inf, 0, negatives)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {flag} wants a finite number > 0") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not usable; {flag} wants a finite number > 0")
        return value

    return parse


MPP = positive_finite("--mpp")


def cell_expansion(text: str) -> float:
    """--cell-expansion: µm, 0 (off) up to cells.MAX_EXPANSION_UM."""
    from .cells import MAX_EXPANSION_UM

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; --cell-expansion wants µm, 0 (off) to {MAX_EXPANSION_UM:g}"
        ) from None
    if not math.isfinite(value) or not 0 <= value <= MAX_EXPANSION_UM:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range; --cell-expansion wants µm, 0 (off) to {MAX_EXPANSION_UM:g} "
            "(cells are 10-30 µm across; QuPath's and StarDist's usual value is 5)"
        )
    return value
