"""Planning a slide before any batch: the settings, the region, the tile grid, the tissue
tiles, the batches and the slide's stains, and the refusals that need no model.

`plan_slide` makes the `SlidePlan` every later stage reads (runner, stitch, exports,
report); `check_slide` makes the same refusals in a second, before the model loads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptnucseg.models.interface import MODEL_FREE_MPP, ModelFacts, TileTissue

from .errors import PipelineInputError
from .journal import quick_file_hash
from .model_spec import DEFAULT_BATCH_SIZE
from .points import PlanPoints, load_plan_points
from .regions import RegionSet, load_plan_regions, tissue_mm2_in
from .slides import SlideReader, coarse_warning, resolve_mpp
from .stains import StainModel, fit_stains
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, Tile, TileGrid
from .tissue import TissueConfig, TissueMask, detect_tissue, tissue_mask

FORMATS = ("geojson", "zarr", "table", "anndata")  # every --formats choice
DEFAULT_FORMATS = ("geojson", "zarr", "table")  # anndata needs an optional extra


@dataclass
class SegmentSettings:
    tile_size: int = DEFAULT_TILE_SIZE  # model pixels
    overlap: int = DEFAULT_OVERLAP  # model pixels; larger than the largest nucleus
    batch_size: int = DEFAULT_BATCH_SIZE  # tiles per journaled batch (a part file: what a resume and a distributed task count in)
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
    force_mpp: bool = False  # accept an --mpp outside the plausible MPP_MIN..MPP_MAX, and a slide coarser than COARSE_MAX_MPP
    wait_for_lock: bool = False  # wait for another run holding a slide's folder instead of refusing
    points: str | None = None  # a person's points file (points.py): prompts instead of, or besides, the prompter's
    points_mode: str = "only"  # "only" (--points) or "add" (--add-points)
    min_nucleus_um2: float | None = None  # masks smaller are dropped (counted); None: the model's (plausibility.py)
    regions: str | None = None  # QuPath annotations (regions.py): only nuclei whose prompt lies inside one are kept
    cell_expansion_um: float = 0.0  # > 0: each nucleus grown into a cell by up to this many µm (cells.py)

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
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # corrupt blocks met while planning (level, level-0 box)
    regions: RegionSet | None = None  # --regions, clipped to the slide and --roi
    region_tissue_mm2: list[float | None] = field(default_factory=list)  # each region's tissue (None without a mask)
    warnings: list[str] = field(default_factory=list)  # said with the plan and kept in the report (a coarse slide)
    tissue: TissueMask | None = None  # the slide's tissue mask (None: not used), for the model's windows

    def tissue_on(self, tile: Tile) -> TileTissue | None:
        """The tissue mask's cells under `tile`, in tile pixels: the model leaves windows without any unrun."""
        if self.tissue is None:
            return None
        ds = self.tissue.downsample
        x0, y0, w0, h0 = self.level0_box(tile)
        rows, cols = self.tissue.array.shape
        c0, r0 = min(max(0, math.floor(x0 / ds)), cols), min(max(0, math.floor(y0 / ds)), rows)
        # one cell more on the far sides: a tile edge on a cell edge, up to rounding, keeps that cell (errs to running)
        c1, r1 = min(cols, max(c0, math.ceil((x0 + w0) / ds) + 1)), min(rows, max(r0, math.ceil((y0 + h0) / ds) + 1))
        cells = self.tissue.array[r0:r1, c0:c1]
        return TileTissue(cells, ds / self.scale, (c0 * ds - x0) / self.scale, (r0 * ds - y0) / self.scale)

    def level0_box(self, tile: Tile) -> tuple[float, float, float, float]:
        """The tile's level-0 box (x, y, w, h); exact floats, so tiles map back without drift."""
        return self.roi[0] + tile.x * self.scale, self.roi[1] + tile.y * self.scale, tile.w * self.scale, tile.h * self.scale


def plan_slide(reader: SlideReader, settings: SegmentSettings, model: ModelFacts) -> SlidePlan:
    """The slide's region, tiles on the model's grid (`model`: its scale, windows, alignment, classes), batches and stains."""
    model_mpp = model.mpp
    slide_mpp, mpp_source = resolve_mpp(reader, settings.mpp, force=settings.force_mpp)
    width0, height0 = reader.dimensions
    regions = load_plan_regions(settings.regions, (width0, height0), settings.roi) if settings.regions else None
    x, y, w, h = _region(reader, settings, regions)
    scale = model_mpp / slide_mpp
    refuse_too_small(reader, (w, h), slide_mpp, scale, bool(settings.roi or regions))
    refuse_black(reader)
    points = load_plan_points(settings.points, settings.points_mode, (width0, height0), settings.roi, model.class_names) if settings.points else None
    only_points = points is not None and points.mode == "only"  # then the points, not the tissue, choose the tiles
    grid = TileGrid(max(1, int(round(w / scale))), max(1, int(round(h / scale))), settings.tile_size, settings.overlap, model.tile_align,
                    model.window_grid, model.seamless_windows)
    region_mm2 = w * h * slide_mpp**2 / 1e6
    plan = SlidePlan(
        path=Path(reader.path), stem=Path(reader.path).stem, slide_key=quick_file_hash(reader.path), slide_mpp=slide_mpp,
        mpp_source=mpp_source, model_mpp=model_mpp, scale=scale, roi=(x, y, w, h), grid=grid, tiles=[], batches=[],
        tissue_fraction=1.0, slide_facts=reader.describe(), dimensions=(width0, height0),
        read_level=reader.best_level_for_downsample(scale), tissue_mm2=region_mm2, points=points, regions=regions,
    )
    coarse = coarse_warning(slide_mpp, mpp_source, model_mpp)
    plan.warnings = [coarse] if coarse else []
    tiles = list(grid)
    mask = None
    if settings.use_tissue_mask and not only_points:
        mask = tissue_mask(reader)
        plan.tissue = mask
        plan.tissue_fraction = mask.fraction
        plan.tissue_mm2 = region_mm2 * mask.fraction_in(plan.roi)
        tiles = [t for t in tiles if mask.fraction_in(plan.level0_box(t)) > 0]
    if regions is not None:  # only tiles whose core reaches a region can own a nucleus kept
        tiles = tiles_in_regions(plan, tiles, regions)
        union = regions.union
        in_union = tissue_mm2_in(union, mask, slide_mpp)
        plan.tissue_mm2 = union.area * slide_mpp**2 / 1e6 if in_union is None else in_union
        plan.region_tissue_mm2 = [tissue_mm2_in(r.geometry, mask, slide_mpp) for r in regions.regions]
    if mask is not None and not tiles and points is None:
        raise _no_tissue(reader, settings)
    if points is not None:  # every tile that owns a given point runs, tissue or not
        gxy = points.region_xy(plan.roi, scale)
        held = grid.indices_owning(gxy[:, 0], gxy[:, 1]) | ({t.index for t in tiles} if not only_points else set())
        tiles = [t for t in grid if t.index in held]
    refuse_grayscale(reader)  # after the tissue check: blank glass is "no tissue", not "grayscale"; black is refused before
    plan.tiles = tiles
    plan.batches = [tiles[i : i + settings.batch_size] for i in range(0, len(tiles), settings.batch_size)]
    plan.stains = slide_stains(reader, plan)
    plan.unreadable = list(reader.unreadable_seen)  # corrupt blocks the overviews met (the batches add theirs)
    return plan


def tiles_in_regions(plan: SlidePlan, tiles: list[Tile], regions: RegionSet) -> list[Tile]:
    """The tiles whose core (cut at the grid's edge) touches a region, in level-0 pixels."""
    if not tiles:
        return tiles
    import shapely

    gw, gh = plan.grid.width, plan.grid.height
    cores = np.array([[max(0.0, t.core[0]), max(0.0, t.core[1]), min(gw, t.core[2]), min(gh, t.core[3])] for t in tiles], float)
    x0, y0 = plan.roi[0] + cores[:, 0] * plan.scale, plan.roi[1] + cores[:, 1] * plan.scale
    x1, y1 = plan.roi[0] + cores[:, 2] * plan.scale, plan.roi[1] + cores[:, 3] * plan.scale
    union = regions.union
    shapely.prepare(union)
    hit = shapely.intersects(union, shapely.box(x0, y0, x1, y1))
    return [t for t, h in zip(tiles, hit) if h]


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
        crops.append(reader.read_tolerant(x0 + (tile.w - w) / 2 * plan.scale, y0 + (tile.h - h) / 2 * plan.scale, w, h, plan.scale))
    return fit_stains(thumb, tissue, crops)


def check_slide(reader: SlideReader, settings: SegmentSettings) -> None:
    """The refusals `plan_slide` makes that need no model (microns per pixel, region, black,
    no tissue, grayscale), in its order: run on every slide before the model loads (7.7 s, 1 GB)
    so that a slide that cannot run is refused in a second."""
    mpp, _ = resolve_mpp(reader, settings.mpp, force=settings.force_mpp)
    regions = load_plan_regions(settings.regions, reader.dimensions, settings.roi) if settings.regions else None
    roi = _region(reader, settings, regions)
    # before "no tissue": 3x3 px holds none
    refuse_too_small(reader, roi[2:], mpp, MODEL_FREE_MPP / mpp, bool(settings.roi or regions))
    refuse_black(reader)
    if settings.use_tissue_mask and not settings.points and tissue_mask(reader).fraction_in(roi) <= 0:
        raise _no_tissue(reader, settings)  # with given points, their tiles run whatever the tissue
    refuse_grayscale(reader)


def _region(
    reader: SlideReader, settings: SegmentSettings, regions: RegionSet | None = None
) -> tuple[int, int, int, int]:
    """The level-0 region to process: --roi, checked to lie inside the slide, or the whole slide;
    with --regions the box around them (already cut to --roi and the slide)."""
    width0, height0 = reader.dimensions
    x, y, w, h = settings.roi or (0, 0, width0, height0)
    inside = w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width0 and y + h <= height0
    if regions is not None and inside:  # the regions are cut to --roi and the slide: their box lies within
        bx, by, bw, bh = regions.bounds()
        x0, y0 = max(x, bx), max(y, by)
        x, y, w, h = x0, y0, min(x + w, bx + bw) - x0, min(y + h, by + bh) - y0
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


BLANK_LEVEL = 200  # an image without colour whose darkest pixel is this bright holds nothing (glass, paper)


def refuse_grayscale(reader: SlideReader) -> None:
    """A slide without colour cannot be H&E; the models would see garbage, so say so up front."""
    thumb = reader.thumbnail(512).astype(np.int16)
    if thumb.size and int(np.abs(np.diff(thumb, axis=2)).max()) <= 2:
        if int(thumb.min()) >= BLANK_LEVEL:
            raise PipelineInputError(
                reader.path, f"is blank: every pixel is white or near-white (darkest {int(thumb.min())}/255), no tissue and no stain to segment",
                "check that this is the right file (a blank scan, an empty export or a wrong page of a multi-page file)",
            )
        raise PipelineInputError(
            reader.path, "has no colour (grayscale); the nucleus models are trained on H&E colour images",
            "segment the RGB original of this slide (RGBA and 16-bit files are converted automatically)",
        )
