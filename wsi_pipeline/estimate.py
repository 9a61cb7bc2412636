"""The plan's time estimate, measured on this machine, and whether the machine is busy.

Why: the plan used to print a time from a fixed 2-core rate per tile, without the model's
loading: "estimated 61 s" ran 19 min on a loaded machine and "2 s" ran 73 s. Here, after the
model has loaded, one real tissue window of the slide goes through the model twice (the first
call carries the warm-up; the second gives seconds per window on this machine, with the run's
threads and device, under its present load), and the estimate is

    time so far (the slides' checks, model loading, planning, the test window: measured)
    + tissue windows to run x seconds per window (measured)
    + tiles x per-tile overhead + nuclei x finishing cost (documented figures, below)

The count is of windows, not tiles: windows of glass are not run (`TileTissue`), so a tile at
the tissue's edge costs a fraction of a full one. Without a model at hand (a distributed run's
client plans before the workers load it) the estimate is the rough documented rate, said so.
The figures: benchmarks/README.md, "Time estimate".
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from promptnucseg.models.interface import NucleusPredictor, span_starts

if TYPE_CHECKING:
    from .plan import SlidePlan
    from .slides import SlideReader
    from .tiling import Tile

# Documented, not measured per run (benchmarks/README.md, "Time estimate", from its profile part):
# reading and post-processing run beside the model, so a tile adds only the loop's wait for them.
TILE_OVERHEAD_S = 0.03
FINISH_S_PER_NUCLEUS = 400e-6  # the exports, per nucleus
ROUGH_WINDOW_S = 0.13  # without a test window: the bundled model alone, per window on 2 cores (docs/benchmarks.md)
HEAVY_CORES = 0.5  # another process using this much CPU during the test window makes the machine busy


@dataclass(frozen=True)
class MachineLoad:
    """How busy this machine is: the 1-min load average against the cores this process may use,
    the other processes that used at least `HEAVY_CORES` while the test window ran, and the cores
    all other processes used meanwhile (more than half of ours: busy)."""

    load1: float | None
    cores: int
    heavy: tuple[str, ...] = ()
    others_cores: float | None = None

    @property
    def busy(self) -> bool:
        crowded = self.others_cores is not None and self.others_cores > self.cores / 2
        return (self.load1 is not None and self.load1 > self.cores) or bool(self.heavy) or crowded

    def note(self) -> str | None:
        if not self.busy:
            return None
        cores = f"{self.cores} core{'s' if self.cores != 1 else ''}"
        load = f"load {self.load1:.1f} on {cores}" if self.load1 is not None else cores
        more = " ..." if len(self.heavy) > 3 else ""
        others = f"; also running: {', '.join(self.heavy[:3])}{more}" if self.heavy else ""
        if self.others_cores is not None and self.others_cores >= 0.05:
            others += f"; other processes used {self.others_cores:.1f} of the {cores} during the test window"
        return f"this machine is busy: {load}{others}; the estimate assumes it stays so"

    def record(self) -> dict[str, Any]:
        return {"load1": self.load1, "cores": self.cores, "busy": self.busy, "other_heavy_processes": list(self.heavy),
                "others_cores": None if self.others_cores is None else round(self.others_cores, 2)}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


@dataclass
class CpuWatch:
    """CPU seconds of every other process between `start` and `heavy()` (Linux /proc; elsewhere none).

    The load average lags a minute and counts this run's own planning; a process that used a
    core while the test window ran is the competition the run will meet."""

    proc: Path = Path("/proc")
    _before: dict[int, tuple[str, float]] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> "CpuWatch":
        self._before, self._t0 = self._sample(), time.monotonic()
        return self

    def heavy(self, share: float = HEAVY_CORES) -> tuple[str, ...]:
        return self.used(share)[0]

    def used(self, share: float = HEAVY_CORES) -> tuple[tuple[str, ...], float | None]:
        """(the processes that used at least `share` cores, most first; the cores all others used),
        since `start`; ((), None) where /proc cannot be read."""
        seconds = time.monotonic() - self._t0
        if seconds <= 0 or not self._before:
            return (), None
        after = self._sample()
        used, total = [], 0.0
        for pid, (name, cpu) in after.items():
            if pid in self._before and self._before[pid][0] == name:
                cores = (cpu - self._before[pid][1]) / seconds
                total += cores
                if cores >= share:
                    used.append((cores, f"{name} (pid {pid}, {cores:.1f} cores)"))
        return tuple(text for _, text in sorted(used, reverse=True)), total

    def _sample(self) -> dict[int, tuple[str, float]]:
        """pid -> (command name, user + system CPU seconds), this process and its threads left out."""
        try:
            tick = os.sysconf("SC_CLK_TCK")
            pids = [int(p.name) for p in self.proc.iterdir() if p.name.isdigit()]
        except (OSError, ValueError, AttributeError):
            return {}
        out = {}
        for pid in pids:
            if pid == os.getpid():
                continue
            try:
                text = (self.proc / str(pid) / "stat").read_text()
            except OSError:
                continue  # gone, or not ours to read
            name, rest = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :].split()
            try:
                out[pid] = (name, (int(rest[11]) + int(rest[12])) / tick)  # utime, stime (fields 14, 15)
            except (IndexError, ValueError):
                continue
        return out


def tile_windows(plan: "SlidePlan", tile: "Tile") -> int:
    """The model windows on `tile` that hold tissue: the ones the predictor runs (`TileTissue`)."""
    if plan.grid.window_grid is None:
        return 1
    size, step = plan.grid.window_grid
    xs, ys = span_starts(tile.w, size, step), span_starts(tile.h, size, step)
    tissue = plan.tissue_on(tile)
    if tissue is None:
        return len(xs) * len(ys)
    return sum(tissue.any_in(x, y, x + size, y + size) for y in ys for x in xs)


def windows_to_run(plan: "SlidePlan", tiles: Iterable["Tile"]) -> int:
    return sum(tile_windows(plan, t) for t in tiles)


@dataclass(frozen=True)
class Probe:
    """One real window through the model, twice: `first_s` with the warm-up, `window_s` warm."""

    first_s: float
    window_s: float
    nuclei: int  # found in the window (all of it, overlap included)
    window: int  # px
    threads: int | None
    device: str
    load: MachineLoad

    def basis(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "its threads"
        where = threads if self.device.startswith("cpu") else f"{self.device}"
        return f"from a {self.window_s:.2f} s test window on {where}"


def _threads() -> int | None:
    torch = sys.modules.get("torch")  # the predictor imported it; the pipeline does not on its own
    return int(torch.get_num_threads()) if torch is not None else None


def probe_window(plan: "SlidePlan", tiles: Sequence["Tile"]) -> tuple["Tile", int, int] | None:
    """The window to time: in the tile with the most tissue, the window with the most (a full
    window of tissue costs what most of the run's windows cost); (tile, x0, y0) in tile px."""
    if plan.grid.window_grid is None or not tiles:
        return None
    size, step = plan.grid.window_grid
    best: tuple[float, Tile, int, int] | None = None
    for tile in tiles:
        tissue = plan.tissue_on(tile)
        if tissue is None:  # no tissue mask: every window runs, any will do
            return tile, 0, 0
        for y in span_starts(tile.h, size, step):
            for x in span_starts(tile.w, size, step):
                r0 = max(0, math.floor((y - tissue.y) / tissue.cell))
                c0 = max(0, math.floor((x - tissue.x) / tissue.cell))
                r1 = math.ceil((y + size - tissue.y) / tissue.cell)
                c1 = math.ceil((x + size - tissue.x) / tissue.cell)
                cells = tissue.cells[r0:r1, c0:c1]
                share = float(cells.mean()) if cells.size else 0.0
                if share > 0 and (best is None or share > best[0]):
                    best = (share, tile, x, y)
                    if share >= 1.0:
                        return tile, x, y
    return None if best is None else (best[1], best[2], best[3])


def probe_model(
    predictor: NucleusPredictor, reader: "SlideReader", plan: "SlidePlan", tiles: Sequence["Tile"]
) -> Probe | None:
    """Time one real tissue window of the slide through `predictor` (twice); None when the plan has
    no tissue window or the window cannot be read (the rough estimate is used then)."""
    from .slide_reader import UnreadableRegion

    where = probe_window(plan, tiles)
    if where is None or plan.grid.window_grid is None:
        return None
    tile, x, y = where
    size = plan.grid.window_grid[0]
    w, h = min(size, tile.w - x), min(size, tile.h - y)
    x0, y0, _, _ = plan.level0_box(tile)
    try:
        rgb = reader.read_scaled(x0 + x * plan.scale, y0 + y * plan.scale, w, h, plan.scale)
    except UnreadableRegion:
        return None
    watch = CpuWatch().start()
    t0 = time.perf_counter()
    predictor.predict([rgb])
    t1 = time.perf_counter()
    found = predictor.predict([rgb])
    t2 = time.perf_counter()
    load = MachineLoad(load_average(), usable_cores(), *watch.used())
    return Probe(t1 - t0, t2 - t1, len(found[0].points), size, _threads(), str(predictor.device), load)


@dataclass(frozen=True)
class TimeEstimate:
    """The estimate the plan prints and the report keeps (with the real time beside it)."""

    seconds: float
    so_far_s: float  # checks, model loading, planning, the test window: spent when the estimate is made
    windows: int
    window_s: float
    tiles: int
    overhead_s: float  # tiles x TILE_OVERHEAD_S
    warmup_s: float
    finish_s: float
    measured: bool
    basis: str
    load: MachineLoad

    def line(self) -> str:
        spent = "checks, model loading, planning, test window" if self.measured else "checks, model loading, planning"
        parts = [f"{duration(self.so_far_s)} so far ({spent})"]
        parts.append(f"{self.windows} tissue window{'s' if self.windows != 1 else ''} x {self.window_s:.2f} s")
        parts.append(f"{self.tiles} tile{'s' if self.tiles != 1 else ''} x {TILE_OVERHEAD_S:g} s")
        if self.finish_s >= 0.5:
            parts.append(f"exports ~{duration(self.finish_s)}")
        head = f"estimated {duration(self.seconds)} in all" if self.measured else f"roughly {duration(self.seconds)}"
        text = f"{head} = {' + '.join(parts)}; {self.basis}"
        busy = self.load.note()
        return f"{text}; {busy}" if busy else text

    def record(self) -> dict[str, Any]:
        return {
            "first_estimate_s": round(self.seconds, 2), "measured": self.measured, "basis": self.basis,
            "so_far_s": round(self.so_far_s, 2), "warmup_s": round(self.warmup_s, 3), "windows": self.windows,
            "seconds_per_window": round(self.window_s, 4), "tiles": self.tiles,
            "tile_overhead_s": round(self.overhead_s, 2),
            "exports_s": round(self.finish_s, 2), "machine": self.load.record(),
        }


def estimate(
    plan: "SlidePlan", tiles: Sequence["Tile"], so_far_s: float, probe: Probe | None, device: str = "cpu"
) -> TimeEstimate:
    """The time the slide's run takes in all, from `probe` (measured) or, without one, the rough
    documented rate; `tiles`: the tiles still to run."""
    windows = windows_to_run(plan, tiles)
    with_tissue = sum(tile_windows(plan, t) > 0 for t in tiles)
    overhead = with_tissue * TILE_OVERHEAD_S
    if probe is not None:
        size, step = plan.grid.window_grid or (probe.window, probe.window)
        nuclei = probe.nuclei * windows * (step / size) ** 2  # a window's nuclei, less the overlap its neighbours share
        finish = nuclei * FINISH_S_PER_NUCLEUS
        warmup = max(0.0, probe.first_s - probe.window_s)  # already paid by the test: recorded, not added
        total = so_far_s + windows * probe.window_s + overhead + finish
        return TimeEstimate(
            total, so_far_s, windows, probe.window_s, with_tissue, overhead, warmup, finish,
            True, probe.basis(), probe.load,
        )
    from .preflight import NUCLEI_PER_MM2

    finish = plan.tissue_mm2 * NUCLEI_PER_MM2 * 0.6 * FINISH_S_PER_NUCLEUS
    total = so_far_s + windows * ROUGH_WINDOW_S + overhead + finish
    gpu = not device.startswith("cpu")
    why = (
        f"not measured on this machine: {ROUGH_WINDOW_S} s per window is the 2-CPU-core figure of the README"
        + ("; a GPU is faster" if gpu else "") + ", without model loading or this machine's load"
    )
    return TimeEstimate(total, so_far_s, windows, ROUGH_WINDOW_S, with_tissue, overhead, 0.0, finish, False, why,
                        MachineLoad(load_average(), usable_cores()))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
