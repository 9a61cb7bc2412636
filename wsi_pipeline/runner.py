"""Running a planned slide's batches: tiles read ahead, through the model, then stitched.

The stage between `plan.py` and `stitch.py`: reader threads read the tiles of each batch
ahead of the model (bounded), the predictor segments them one tile per call, and a
post-processing pool stitches each finished batch into its journaled part.

Memory stays bounded whatever the slide size: at most `prefetch` tiles wait in memory,
at most two batches are being post-processed, and finished nuclei go to part files on
disk at once; the exporters then stream those parts. `run_batches` is the unit of work a
dask worker runs too, so a distributed run writes the very same parts.
"""
from __future__ import annotations

import resource
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from promptnucseg.models.interface import NucleusPredictor
from .interrupts import Interrupted, graceful, stop_requested
from .journal import Journal
from .nuclei import SlideNuclei, load_part
from .plan import SegmentSettings, SlidePlan
from .slide_reader import UnreadableRegion
from .slides import SlideReader
from .stitch import stitch_batch
from .tiling import Tile


@dataclass
class BatchStats:
    tiles: int = 0
    nuclei: int = 0
    seconds: float = 0.0
    windows_run: int | None = None  # the model's windows (when it counts them: `WindowCounts`)
    windows_skipped: int | None = None  # of those, left unrun for holding no tissue


def _read_tile(reader: SlideReader, plan: SlidePlan, tile: Tile) -> tuple[Tile, np.ndarray, tuple[float, float], float, list[dict]]:
    """The tile at the model's resolution; tile pixel (i, j) starts at level-0 origin + (i, j) * scale.
    Blocks a decoder cannot read (a corrupt tile in the file) come back white and are named in
    the last item, so the rest of the slide is still segmented."""
    x0, y0, w0, h0 = plan.level0_box(tile)
    try:
        return tile, reader.read_scaled(x0, y0, tile.w, tile.h, plan.scale), (x0, y0), plan.scale, []
    except UnreadableRegion as bad:
        if bad.pixels is not None:
            return tile, bad.pixels, (x0, y0), plan.scale, bad.regions
        box = [int(x0), int(y0), int(round(w0)), int(round(h0))]
        return tile, np.full((tile.h, tile.w, 3), 255, np.uint8), (x0, y0), plan.scale, [{"level": plan.read_level, "box": box, "error": str(bad.problem)}]


def run_batches(
    reader: SlideReader,
    plan: SlidePlan,
    batch_indices: Sequence[int],
    predictor: NucleusPredictor,
    journal: Journal,
    settings: SegmentSettings,
    on_batch: Callable[[int, int], None] | None = None,
    on_tile: Callable[[int, Tile], None] | None = None,
) -> BatchStats:
    """Run the given batches (skipping any already journaled) and journal each as it finishes;
    `on_tile(found, tile)` is called as each tile leaves the model (its nuclei before stitching),
    `on_batch(tiles, nuclei)` as each batch is journaled."""
    done = journal.done()
    todo = [b for b in batch_indices if b not in done]
    stats = BatchStats()
    counts = getattr(predictor, "windows", None)
    counted = (counts.run, counts.skipped) if counts is not None else None
    started = time.monotonic()
    workers = max(1, settings.workers)
    with graceful(), ThreadPoolExecutor(workers, thread_name_prefix="read") as readers, ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="post") as post:
        pending: deque[tuple[Future, int]] = deque()
        for b, tiles in zip(todo, _prefetched(readers, reader, plan, todo, prefetch=2 * settings.batch_size)):
            if stop_requested():
                break  # a signal: journal what is in post-processing, then stop (interrupts.py)
            unreadable = [r for *_, regions in tiles for r in regions]
            tiles = [t[:4] for t in tiles]
            given = [plan.points.on_tile(t, o, s) if plan.points is not None else None for t, _, o, s in tiles]
            nuclei = []
            for (t, rgb, _, _), g in zip(tiles, given):  # one tile per call: progress per tile (the predictor batches its windows itself)
                nuclei += predictor.predict([rgb], None if g is None else [g.prompts], [plan.tissue_on(t)])
                if on_tile is not None:
                    on_tile(len(nuclei[-1].points), t)
                while pending and pending[0][0].done():  # report a journaled batch as soon as it is
                    _finish(*pending.popleft(), stats, on_batch)
            results = [(t, rgb, o, s, n, g) for (t, rgb, o, s), n, g in zip(tiles, nuclei, given)]
            pending.append((post.submit(stitch_batch, plan, settings, journal, b, results, unreadable), len(tiles)))
            stats.tiles += len(tiles)
            while len(pending) > 1:  # at most two batches in post-processing: bounded memory
                _finish(*pending.popleft(), stats, on_batch)
        while pending:
            _finish(*pending.popleft(), stats, on_batch)
    stats.seconds = time.monotonic() - started
    if counts is not None and counted is not None:
        stats.windows_run, stats.windows_skipped = counts.run - counted[0], counts.skipped - counted[1]
    signum = stop_requested()
    if signum is not None:
        raise Interrupted(signum)
    return stats


def _finish(fut: Future, n_tiles: int, stats: BatchStats, on_batch: Callable[[int, int], None] | None) -> None:
    n = fut.result()
    stats.nuclei += n
    if on_batch is not None:
        on_batch(n_tiles, n)


def _prefetched(pool: ThreadPoolExecutor, reader: SlideReader, plan: SlidePlan, batches: Sequence[int], prefetch: int) -> Iterator[list[tuple]]:
    """Tiles of each batch, read ahead by the pool but never more than `prefetch` at once."""
    order = [(b, t) for b in batches for t in plan.batches[b]]
    queue: deque[tuple[int, Future]] = deque()
    it = iter(order)
    current, bucket = None, []
    for b, t in it:
        queue.append((b, pool.submit(_read_tile, reader, plan, t)))
        if len(queue) >= prefetch:
            break
    while queue:
        b, fut = queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt[0], pool.submit(_read_tile, reader, plan, nxt[1])))
        if current is not None and b != current:
            yield bucket
            bucket = []
        current = b
        bucket.append(fut.result())
    if bucket:
        yield bucket


def iter_parts(journal: Journal) -> Iterator[SlideNuclei]:
    for path in journal.parts_in_order():
        yield load_part(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
