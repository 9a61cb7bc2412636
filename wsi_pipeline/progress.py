"""The per-slide progress bar: one step per tile, an ETA per tissue window, tissue and nuclei done.

Why not tqdm's defaults: the bar stepped per batch of 8 tiles, so it read `0/36 [00:00<?]`
for the first minutes, and its rate included the first tile's warm-up (model weights paged
in, allocator, threads), which put the ETA off by a factor of ten; on resume it counted the
journaled tiles as if done in no time. And a rate per tile is not a rate of work: a tile at the
tissue's edge runs two of its 25 windows (glass is not run), a tile in the middle all of them,
so a tile-rate ETA swung with where the run was on the slide.

So the bar counts tiles, but the ETA is the tissue windows left times seconds per window:
until `RATE_AFTER_TILES` tiles after the first are done that is the plan's test window
(`window_s`, estimate.py, marked "est."); after them, this run's own rate, measured from the end
of its first tile (which carries what warm-up is left) over the windows done since. With
neither, the bar says "warm-up" and shows no ETA rather than guessing.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

RATE_AFTER_TILES = 3  # tiles after the first before the measured rate replaces the test window's
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} tiles [{elapsed}{postfix}]"


@dataclass
class SlideProgress:
    """tqdm bar for one slide; `tile_done` per tile from the model, `batch_done` per journaled batch."""

    name: str
    total_tiles: int
    tiles_done: int  # already journaled (a resumed run)
    tissue_mm2: float  # tissue in the planned tiles: shown pro rata of tiles done
    nuclei_done: int = 0  # in journaled batches
    enabled: bool = True
    windows_left: int = 0  # tissue windows this run has to run (estimate.windows_to_run); 0: unknown, no ETA
    window_s: float | None = None  # seconds per window from the plan's test window, until the run's own rate
    _bar: Any = field(init=False, default=None)
    _warm: bool = field(init=False, default=False)
    _unjournaled: deque = field(init=False, default_factory=deque)  # per tile: nuclei the model found, batch not yet journaled
    _windows_done: int = field(init=False, default=0)  # this run, the first tile included
    _timed_tiles: int = field(init=False, default=0)  # after the first
    _timed_windows: int = field(init=False, default=0)  # after the first tile
    _clock: float = field(init=False, default=0.0)  # monotonic, at the end of the first tile

    def __post_init__(self) -> None:
        self._bar = tqdm(
            total=self.total_tiles, initial=self.tiles_done, desc=self.name, unit="tile",
            disable=not self.enabled, dynamic_ncols=True, smoothing=0, bar_format=BAR_FORMAT,
        )
        self._show(None if self.eta() is not None else "warm-up")

    def rate(self) -> tuple[float, bool] | None:
        """(seconds per tissue window, measured by this run?), or None while neither is known."""
        if self._timed_tiles >= RATE_AFTER_TILES and self._timed_windows > 0:
            return (time.monotonic() - self._clock) / self._timed_windows, True
        if self.window_s is not None:
            return self.window_s, False
        return None

    def eta_seconds(self) -> tuple[float, bool] | None:
        """(seconds left, from this run's own rate?): tissue windows left x seconds per window."""
        rate = self.rate()
        if rate is None or self.windows_left <= 0:
            return None
        return max(0, self.windows_left - self._windows_done) * rate[0], rate[1]

    def eta(self) -> str | None:
        """The time left as the bar shows it; "est." while it is the plan's test window's rate."""
        rate, left = self.rate(), self.eta_seconds()
        if rate is None or left is None:
            return None
        return f"ETA {tqdm.format_interval(left[0])}{'' if left[1] else ' est.'} ({rate[0]:.2f} s/window)"

    def _show(self, state: str | None = None, ahead: int = 0, refresh: bool = True) -> None:
        n = self._bar.n + ahead
        done = n / self.total_tiles * self.tissue_mm2 if self.total_tiles else 0.0
        found = sum(self._unjournaled)  # counted per tile before stitching drops overlap duplicates: "~"
        nuclei = f"~{self.nuclei_done + found:,}" if found else f"{self.nuclei_done:,}"
        eta = self.eta()
        tissue = f"tissue {done:.2f}/{self.tissue_mm2:.2f} mm²"
        text = ", ".join(p for p in (state, eta, tissue, f"{nuclei} nuclei") if p)
        self._bar.set_postfix_str(text, refresh=refresh)

    def tile_done(self, found: int = 0, windows: int = 0) -> None:
        """A tile left the model with `found` nuclei, having run `windows` tissue windows."""
        self._unjournaled.append(found)
        self._windows_done += windows
        if not self._warm:  # the first tile of this run carries the warm-up: the clock starts after it
            self._warm = True
            self._clock = time.monotonic()
            self._bar.start_t = time.time()  # tqdm's own clock (elapsed), from the same moment
            self._show(None if self.eta() is not None else "warm-up done", ahead=1, refresh=False)
        else:
            self._timed_tiles += 1
            self._timed_windows += windows
            self._show(ahead=1, refresh=False)  # one redraw per tile, by update()
        self._bar.update(1)

    def batch_done(self, nuclei: int, tiles: int = 0) -> None:
        self.nuclei_done += nuclei
        for _ in range(min(tiles, len(self._unjournaled))):  # the batch's tiles now count as journaled
            self._unjournaled.popleft()
        self._show()

    def close(self) -> None:
        self._bar.close()
