"""One slide from file to nuclei on disk: plan tiles, stream them through the model, keep
each nucleus once, journal every finished batch, and write the final outputs.

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
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from promptnucseg.models.interface import NucleusPredictor, TileNuclei
from .errors import PipelineInputError
from .geometry import mask_pixel_to_level0
from .interrupts import Interrupted, graceful, stop_requested
from .journal import Journal, quick_file_hash
from .points import PlanPoints, TilePoints, load_plan_points
from .records import SlideNuclei, from_tile_nuclei, load_part, save_part
from .slides import SlideReader, resolve_mpp
from .stains import StainModel, fit_stains
from .tiling import Tile, TileGrid
from .tissue import TissueConfig, detect_tissue, tissue_mask

FORMATS = ("geojson", "zarr", "table", "anndata")  # every --formats choice
DEFAULT_FORMATS = ("geojson", "zarr", "table")  # anndata needs an optional extra


@dataclass
class SegmentSettings:
    tile_size: int = 1024  # model pixels
    overlap: int = 128  # model pixels; larger than the largest nucleus (~25 um = 100 px at 0.25)
    batch_size: int = 8  # tiles per model call and per journaled part
    workers: int = 4  # reader threads (and post-processing threads)
    mpp: float | None = None  # override of the slide's microns per pixel
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in level-0 pixels
    formats: tuple[str, ...] = DEFAULT_FORMATS
    label_map: bool = False  # also <stem>_labels.tif (level 0) for inputs small enough
    gzip: bool = False  # .geojson.gz
    simplify_tolerance: float = 0.5  # polygon simplification, model pixels
    use_tissue_mask: bool = True
    overwrite: bool = False
    progress: bool = True
    label_map_max_pixels: int = 20000 * 20000
    force_mpp: bool = False  # accept an --mpp outside the plausible MPP_MIN..MPP_MAX
    wait_for_lock: bool = False  # wait for another run holding a slide's folder instead of refusing
    points: str | None = None  # a person's points file (points.py): prompts instead of, or besides, the prompter's
    points_mode: str = "only"  # "only" (--points) or "add" (--add-points)
    min_nucleus_um2: float | None = None  # masks smaller are dropped (counted); None: the model's (plausibility.py)

# A region narrower than this many model px (8 um at 0.25 um/px) cannot hold a nucleus (5-20 um).
MIN_REGION_MODEL_PX = 32


@dataclass
class SlidePlan:
    path: Path
    stem: str
    slide_key: str  # content hash: the seed of stable nucleus ids
    slide_mpp: float
    mpp_source: str
    model_mpp: float
    scale: float  # level-0 pixels per model pixel
    roi: tuple[int, int, int, int]  # level-0 region processed
    grid: TileGrid
    tiles: list[Tile]  # tiles with tissue, row-major
    batches: list[list[Tile]]
    tissue_fraction: float
    slide_facts: dict[str, Any]
    dimensions: tuple[int, int]  # level-0 (width, height)
    read_level: int = 0  # the pyramid level tiles are read from
    tissue_mm2: float = 0.0  # tissue area inside the region (the whole region without a tissue mask)
    points: PlanPoints | None = None  # given points (--points / --add-points)
    stains: StainModel = StainModel()  # the slide's colour deconvolution (stains.py), for the OD columns
    min_nucleus_um2: float = 0.0  # masks smaller than this are dropped and counted

    def level0_box(self, tile: Tile) -> tuple[float, float, float, float]:
        """The tile's level-0 box (x, y, w, h); exact floats, so tiles map back without drift."""
        return self.roi[0] + tile.x * self.scale, self.roi[1] + tile.y * self.scale, tile.w * self.scale, tile.h * self.scale


def plan_slide(
    reader: SlideReader, settings: SegmentSettings, model_mpp: float, align: int = 32, window_grid: tuple[int, int] | None = None, class_names: Sequence[str] = ()
) -> SlidePlan:
    slide_mpp, mpp_source = resolve_mpp(reader, settings.mpp, force=settings.force_mpp)
    width0, height0 = reader.dimensions
    x, y, w, h = _region(reader, settings)
    scale = model_mpp / slide_mpp
    refuse_too_small(reader, (w, h), slide_mpp, scale, bool(settings.roi))
    refuse_black(reader)
    points = load_plan_points(settings.points, settings.points_mode, (width0, height0), settings.roi, class_names) if settings.points else None
    only_points = points is not None and points.mode == "only"  # then the points, not the tissue, choose the tiles
    grid = TileGrid(max(1, int(round(w / scale))), max(1, int(round(h / scale))), settings.tile_size, settings.overlap, align, window_grid)
    region_mm2 = w * h * slide_mpp**2 / 1e6
    plan = SlidePlan(
        path=Path(reader.path), stem=Path(reader.path).stem, slide_key=quick_file_hash(reader.path), slide_mpp=slide_mpp,
        mpp_source=mpp_source, model_mpp=model_mpp, scale=scale, roi=(x, y, w, h), grid=grid, tiles=[], batches=[],
        tissue_fraction=1.0, slide_facts=reader.describe(), dimensions=(width0, height0),
        read_level=reader.best_level_for_downsample(scale), tissue_mm2=region_mm2, points=points,
    )
    tiles = list(grid)
    if settings.use_tissue_mask and not only_points:
        mask = tissue_mask(reader)
        plan.tissue_fraction = mask.fraction
        plan.tissue_mm2 = region_mm2 * mask.fraction_in(plan.roi)
        tiles = [t for t in tiles if mask.fraction_in(plan.level0_box(t)) > 0]
        if not tiles and points is None:
            raise _no_tissue(reader, settings)
    if points is not None:  # every tile that owns a given point runs, tissue or not
        gxy = points.region_xy(plan.roi, scale)
        held = grid.indices_owning(gxy[:, 0], gxy[:, 1]) | ({t.index for t in tiles} if not only_points else set())
        tiles = [t for t in grid if t.index in held]
    refuse_grayscale(reader)  # after the tissue check: blank glass is "no tissue", not "grayscale"; black is refused before
    plan.tiles = tiles
    plan.batches = [tiles[i : i + settings.batch_size] for i in range(0, len(tiles), settings.batch_size)]
    plan.stains = slide_stains(reader, plan)
    return plan


def slide_stains(reader: SlideReader, plan: SlidePlan, patches: int = 6, side: int = 256) -> StainModel:
    """Fit the slide's stains once, before any batch, so every tile (resumed or on another
    worker) is measured alike: white from the thumbnail's glass, vectors from a few
    model-resolution crops at the centres of tiles spread over the plan."""
    thumb = reader.thumbnail(1024)
    tissue, _ = detect_tissue(thumb, max(1, thumb.shape[0] * thumb.shape[1] // 10000))
    picks = plan.tiles[:: max(1, len(plan.tiles) // patches)][:patches]
    crops = []
    for tile in picks:
        x0, y0, _, _ = plan.level0_box(tile)
        w, h = min(side, tile.w), min(side, tile.h)
        crops.append(reader.read_scaled(x0 + (tile.w - w) / 2 * plan.scale, y0 + (tile.h - h) / 2 * plan.scale, w, h, plan.scale))
    return fit_stains(thumb, tissue, crops)


def check_slide(reader: SlideReader, settings: SegmentSettings) -> None:
    """The refusals `plan_slide` makes that need no model (microns per pixel, region, black,
    no tissue, grayscale), in its order: run on every slide before the model loads (7.7 s, 1 GB)
    so that a slide that cannot run is refused in a second."""
    resolve_mpp(reader, settings.mpp, force=settings.force_mpp)
    roi = _region(reader, settings)
    refuse_black(reader)
    if settings.use_tissue_mask and not settings.points and tissue_mask(reader).fraction_in(roi) <= 0:
        raise _no_tissue(reader, settings)  # with given points, their tiles run whatever the tissue
    refuse_grayscale(reader)


def _region(reader: SlideReader, settings: SegmentSettings) -> tuple[int, int, int, int]:
    """The level-0 region to process: --roi, checked to lie inside the slide, or the whole slide."""
    width0, height0 = reader.dimensions
    x, y, w, h = settings.roi or (0, 0, width0, height0)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width0 or y + h > height0:
        raise PipelineInputError(reader.path, f"--roi {x},{y},{w},{h} is not inside the slide ({width0}x{height0} level-0 px)", "give x,y,w,h within the slide")
    return x, y, w, h


def _no_tissue(reader: SlideReader, settings: SegmentSettings) -> PipelineInputError:
    return PipelineInputError(
        reader.path, "no tissue found in the slide" + (" region" if settings.roi else ""),
        "check that this is the right file (blank or out-of-focus scans look empty), or pass --no-tissue-mask to process every tile",
    )


def refuse_too_small(reader: SlideReader, size: tuple[int, int], mpp: float, scale: float, is_roi: bool) -> None:
    """An image (or region) smaller than a nucleus holds none; say so instead of "no tissue"."""
    w, h = size
    if min(w, h) / scale >= MIN_REGION_MODEL_PX:
        return
    what = "the --roi region" if is_roi else "the image"
    raise PipelineInputError(
        reader.path,
        f"{what} is only {w}x{h} px ({w * mpp:.2g}x{h * mpp:.2g} um at {mpp:g} um/px), too small to hold a nucleus "
        f"(5-20 um across; at least {MIN_REGION_MODEL_PX * scale:.0f} px a side is needed at this resolution)",
        "check that this is the right file (not a thumbnail, icon or failed export) and that --mpp is right" + ("; widen --roi" if is_roi else ""),
    )


def refuse_black(reader: SlideReader, cfg: TissueConfig = TissueConfig()) -> None:
    """An all-black image is a failed scan or export, not a colourless or empty slide."""
    thumb = reader.thumbnail(512)
    if thumb.size and int(thumb.max()) < cfg.black_level * 255:
        raise PipelineInputError(
            reader.path, f"is entirely black (no pixel brighter than {int(thumb.max())}/255): a failed scan, a failed export, or pixel data this reader cannot decode",
            "open it in a slide viewer; if it looks right there, export it again as 8-bit RGB (TIFF or SVS) and segment that",
        )


def refuse_grayscale(reader: SlideReader) -> None:
    """A slide without colour cannot be H&E; the models would see garbage, so say so up front."""
    thumb = reader.thumbnail(512).astype(np.int16)
    if thumb.size and int(np.abs(np.diff(thumb, axis=2)).max()) <= 2:
        raise PipelineInputError(
            reader.path, "has no colour (grayscale); the nucleus models are trained on H&E colour images",
            "segment the RGB original of this slide (RGBA and 16-bit files are converted automatically)",
        )


@dataclass
class BatchStats:
    tiles: int = 0
    nuclei: int = 0
    seconds: float = 0.0


def _read_tile(reader: SlideReader, plan: SlidePlan, tile: Tile) -> tuple[Tile, np.ndarray, tuple[float, float], float]:
    """The tile at the model's resolution; tile pixel (i, j) starts at level-0 origin + (i, j) * scale."""
    x0, y0, _, _ = plan.level0_box(tile)
    return tile, reader.read_scaled(x0, y0, tile.w, tile.h, plan.scale), (x0, y0), plan.scale


def _owns(plan: SlidePlan, tile: Tile, points: np.ndarray, origin: tuple[float, float], scale: float) -> np.ndarray:
    """Which tile-pixel points lie in this tile's core (region model-pixel frame)."""
    level0 = mask_pixel_to_level0(points, origin, scale)
    return tile.owns((level0[:, 0] - plan.roi[0]) / plan.scale, (level0[:, 1] - plan.roi[1]) / plan.scale)


def _owned(plan: SlidePlan, tile: Tile, nuclei: TileNuclei, origin: tuple[float, float], scale: float) -> TileNuclei:
    """The nuclei whose prompt point lies in this tile's core."""
    if not len(nuclei):
        return nuclei
    return nuclei.select(_owns(plan, tile, nuclei.points, origin, scale))


def _postprocess(
    plan: SlidePlan, settings: SegmentSettings, journal: Journal, batch_index: int,
    results: list[tuple[Tile, np.ndarray, tuple[float, float], float, TileNuclei, TilePoints | None]],
) -> int:
    parts = []
    facts: dict[str, Any] = {"points_missing": [], "points_deleted": 0} if plan.points is not None else {}
    small = 0
    for tile, rgb, origin, scale, nuclei, given in results:
        owned = _owned(plan, tile, nuclei, origin, scale)
        if given is not None:  # given points: which the tile owns but got no nucleus; Ignore* deletions
            owned, missing, deleted = given.apply(owned, _owns(plan, tile, given.prompts.points, origin, scale))
            facts["points_missing"] += missing
            facts["points_deleted"] += deleted
        found = from_tile_nuclei(owned, origin_level0=origin, scale=scale, slide_key=plan.slide_key, rgb_tile=rgb, model_mpp=plan.model_mpp, simplify_tolerance_px=settings.simplify_tolerance, stains=plan.stains)
        big = found.measurements["area_um2"] >= plan.min_nucleus_um2  # smaller: fragments, not nuclei
        if given is not None and len(found):  # a person's point keeps its nucleus, however small
            chosen = {tuple(p) for p in mask_pixel_to_level0(given.prompts.points.astype(np.float64), origin, scale).tolist()}
            big |= np.fromiter((tuple(p) in chosen for p in found.points.tolist()), bool, len(found))
        small += int((~big).sum())
        parts.append(found if big.all() else found.select(big))
    batch = SlideNuclei.concatenate(parts)
    part = journal.part_path(batch_index)
    save_part(part, batch)
    journal.record(batch_index, part, {"tiles": [t.index for t, *_ in results], "nuclei": len(batch), "small_dropped": small, **facts})
    return len(batch)


def run_batches(
    reader: SlideReader,
    plan: SlidePlan,
    batch_indices: Sequence[int],
    predictor: NucleusPredictor,
    journal: Journal,
    settings: SegmentSettings,
    on_batch: Callable[[int, int], None] | None = None,
    on_tile: Callable[[], None] | None = None,
) -> BatchStats:
    """Run the given batches (skipping any already journaled) and journal each as it finishes;
    `on_tile` is called as each tile leaves the model, `on_batch(tiles, nuclei)` as each batch is journaled."""
    done = journal.done()
    todo = [b for b in batch_indices if b not in done]
    stats = BatchStats()
    started = time.monotonic()
    workers = max(1, settings.workers)
    with graceful(), ThreadPoolExecutor(workers, thread_name_prefix="read") as readers, ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="post") as post:
        pending: deque[tuple[Future, int]] = deque()
        for b, tiles in zip(todo, _prefetched(readers, reader, plan, todo, prefetch=2 * settings.batch_size)):
            if stop_requested():
                break  # a signal: journal what is in post-processing, then stop (interrupts.py)
            given = [plan.points.on_tile(t, o, s) if plan.points is not None else None for t, _, o, s in tiles]
            nuclei = []
            for (_, rgb, _, _), g in zip(tiles, given):  # one tile per call: progress per tile (the predictor batches its windows itself)
                nuclei += predictor.predict([rgb]) if g is None else predictor.predict([rgb], [g.prompts])
                if on_tile is not None:
                    on_tile()
                while pending and pending[0][0].done():  # report a journaled batch as soon as it is
                    _finish(*pending.popleft(), stats, on_batch)
            results = [(t, rgb, o, s, n, g) for (t, rgb, o, s), n, g in zip(tiles, nuclei, given)]
            pending.append((post.submit(_postprocess, plan, settings, journal, b, results), len(tiles)))
            stats.tiles += len(tiles)
            while len(pending) > 1:  # at most two batches in post-processing: bounded memory
                _finish(*pending.popleft(), stats, on_batch)
        while pending:
            _finish(*pending.popleft(), stats, on_batch)
    stats.seconds = time.monotonic() - started
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
