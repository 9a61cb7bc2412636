"""The per-slide progress bar: one step per tile, a rate that tells time, tissue and nuclei done.

Why not tqdm's defaults: the bar stepped per batch of 8 tiles, so it read `0/36 [00:00<?]`
for the first minutes, and its rate included the first tile's warm-up (model weights paged
in, allocator, threads), which put the ETA off by a factor of ten; on resume it counted the
journaled tiles as if done in no time. Here the rate is an average over this run's tiles
after the first (smoothing 0: tqdm then divides by n - initial), and until a second tile is
done the bar says "warm-up" and shows no rate rather than guessing; elapsed time counts from
the end of that first tile.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm


@dataclass
class SlideProgress:
    """tqdm bar for one slide; `tile_done` per tile from the model, `batch_done` per journaled batch."""

    name: str
    total_tiles: int
    tiles_done: int  # already journaled (a resumed run)
    tissue_mm2: float  # tissue in the planned tiles: shown pro rata of tiles done
    nuclei_done: int = 0  # in journaled batches
    enabled: bool = True
    _bar: Any = field(init=False, default=None)
    _warm: bool = field(init=False, default=False)
    _unjournaled: deque = field(init=False, default_factory=deque)  # per tile: nuclei the model found, batch not yet journaled

    def __post_init__(self) -> None:
        self._bar = tqdm(
            total=self.total_tiles, initial=self.tiles_done, desc=self.name, unit="tile",
            disable=not self.enabled, dynamic_ncols=True, smoothing=0,
        )
        self._show("warm-up")

    def _show(self, state: str | None = None, ahead: int = 0, refresh: bool = True) -> None:
        n = self._bar.n + ahead
        done = n / self.total_tiles * self.tissue_mm2 if self.total_tiles else 0.0
        found = sum(self._unjournaled)  # counted per tile before stitching drops overlap duplicates: "~"
        nuclei = f"~{self.nuclei_done + found:,}" if found else f"{self.nuclei_done:,}"
        text = f"tissue {done:.2f}/{self.tissue_mm2:.2f} mm², {nuclei} nuclei"
        self._bar.set_postfix_str(f"{state}, {text}" if state else text, refresh=refresh)

    def tile_done(self, found: int = 0) -> None:
        self._unjournaled.append(found)
        if not self._warm:  # the first tile of this run carries the warm-up: the clock starts after it
            self._warm = True
            self._bar.initial = self._bar.n + 1  # rate = (n - initial) / elapsed: "?" until a second tile
            self._bar.start_t = time.time()  # tqdm's own clock
            self._show("warm-up done", ahead=1, refresh=False)
        else:
            self._show(ahead=1, refresh=False)  # one redraw per tile, by update()
        self._bar.update(1)

    def batch_done(self, nuclei: int, tiles: int = 0) -> None:
        self.nuclei_done += nuclei
        for _ in range(min(tiles, len(self._unjournaled))):  # the batch's tiles now count as journaled
            self._unjournaled.popleft()
        self._show()

    def close(self) -> None:
        self._bar.close()
