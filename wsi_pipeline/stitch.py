"""Stitching: each tile's nuclei onto the slide, each nucleus kept once.

The ownership rule: between two neighbouring tiles the boundary sits in the middle of their
overlap, so the tiles' *cores* (`tiling.Tile.core`, open to infinity at the region's edges)
partition the region and a prompt point lies in exactly one core; the nucleus belongs to
that tile (`owned_nuclei`). No pairwise polygon or IoU pass is needed, and the cost is linear in
the number of nuclei. A person's points (`--points`) are owned by the same rule.

The owned nuclei then become slide records (`from_tile_nuclei`: outline, morphometrics,
level-0 coordinates, stable ids), fragments below the model's minimum are dropped and
counted, and the batch is saved as one journaled part (`stitch_batch`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from promptnucseg.models.interface import TileNuclei
from .geometry import mask_pixel_to_level0, rings_to_polygons, simplify_polygons, to_level0, trace_outlines
from .journal import Journal
from .morphometrics import DEFAULT_STAINS, measure_nuclei
from .nuclei import SlideNuclei, nucleus_id, save_part
from .plan import SegmentSettings, SlidePlan
from .points import TilePoints
from .stains import StainModel
from .tiling import Tile


def owns_points(plan: SlidePlan, tile: Tile, points: np.ndarray, origin: tuple[float, float], scale: float) -> np.ndarray:
    """Which tile-pixel points lie in this tile's core (region model-pixel frame)."""
    level0 = mask_pixel_to_level0(points, origin, scale)
    return tile.owns((level0[:, 0] - plan.roi[0]) / plan.scale, (level0[:, 1] - plan.roi[1]) / plan.scale)


def owned_nuclei(plan: SlidePlan, tile: Tile, nuclei: TileNuclei, origin: tuple[float, float], scale: float) -> TileNuclei:
    """The nuclei whose prompt point lies in this tile's core."""
    if not len(nuclei):
        return nuclei
    return nuclei.select(owns_points(plan, tile, nuclei.points, origin, scale))


def stitch_batch(
    plan: SlidePlan, settings: SegmentSettings, journal: Journal, batch_index: int,
    results: list[tuple[Tile, np.ndarray, tuple[float, float], float, TileNuclei, TilePoints | None]],
    unreadable: Sequence[dict[str, Any]] = (),
) -> int:
    """One finished batch: each tile's owned nuclei as slide records, fragments dropped (a
    person's points kept however small), saved as the batch's part and journaled; returns
    the nuclei kept."""
    parts = []
    facts: dict[str, Any] = {"points_missing": [], "points_deleted": 0} if plan.points is not None else {}
    small = 0
    for tile, rgb, origin, scale, nuclei, given in results:
        owned = owned_nuclei(plan, tile, nuclei, origin, scale)
        if given is not None:  # given points: which the tile owns but got no nucleus; Ignore* deletions
            owned, missing, deleted = given.apply(owned, owns_points(plan, tile, given.prompts.points, origin, scale))
            facts["points_missing"] += missing
            facts["points_deleted"] += deleted
        found = from_tile_nuclei(owned, origin_level0=origin, scale=scale, slide_key=plan.slide_key, rgb_tile=rgb, model_mpp=plan.model_mpp, simplify_tolerance_px=settings.simplify_tolerance, stains=plan.stains)
        big = found.measurements["area_um2"] >= plan.min_nucleus_um2  # smaller: fragments, not nuclei
        if given is not None and len(found):  # a person's point keeps its nucleus, however small
            chosen = {tuple(p) for p in mask_pixel_to_level0(given.prompts.points.astype(np.float64), origin, scale).tolist()}
            big |= np.fromiter((tuple(p) in chosen for p in found.points.tolist()), bool, len(found))
        inside = np.ones(len(found), bool)
        if plan.regions is not None and len(found):  # --regions: the prompt must lie in one (edge in); record which
            found.regions = plan.regions.assign(found.points)
            inside = found.regions >= 0
        small += int((inside & ~big).sum())
        keep = big & inside
        parts.append(found if keep.all() else found.select(keep))
    batch = SlideNuclei.concatenate(parts)
    part = journal.part_path(batch_index)
    save_part(part, batch)
    # blocks the decoder could not read (white in the tiles) are journaled with the batch, for the report
    journal.record(batch_index, part, {"tiles": [t.index for t, *_ in results], "nuclei": len(batch), "small_dropped": small, **facts, **({"unreadable": list(unreadable)} if unreadable else {})})
    return len(batch)


def from_tile_nuclei(
    tile: TileNuclei,
    origin_level0: Sequence[float],
    scale: float,
    slide_key: str,
    rgb_tile: np.ndarray | None,
    model_mpp: float,
    simplify_tolerance_px: float = 0.5,
    stains: StainModel = DEFAULT_STAINS,
) -> SlideNuclei:
    """A tile's nuclei as slide records: outline, morphometrics, level-0 coordinates, ids.

    `origin_level0`: level-0 position of the tile's top-left pixel corner; `scale`: level-0
    pixels per tile pixel; `rgb_tile`: the uint8 tile the model saw (for stain optical
    densities); `model_mpp`: microns per tile pixel; `simplify_tolerance_px`: outline
    simplification in tile pixels; `stains`: the slide's colour deconvolution. Nuclei with an
    empty mask are dropped.
    """
    traced = trace_outlines(tile.masks)
    if len(traced.index) == 0:
        return SlideNuclei()
    box_xy = tile.boxes[traced.index, :2].astype(np.float64)
    coords = traced.coords + np.repeat(box_xy, np.diff(traced.offsets), axis=0)  # tile pixels
    offsets = traced.offsets
    outlines = simplify_polygons(rings_to_polygons(coords, offsets), simplify_tolerance_px)
    ok = np.array([p is not None for p in outlines], bool)
    keep, clean = traced.index, traced.masks
    if not ok.all():  # make_valid found no area left: a degenerate mask
        lengths = np.diff(offsets)[ok]
        coords = np.concatenate([coords[offsets[k] : offsets[k + 1]] for k in np.flatnonzero(ok)]) if ok.any() else np.zeros((0, 2))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        keep, clean, outlines = keep[ok], [m for m, good in zip(clean, ok) if good], outlines[ok]
        if not len(keep):
            return SlideNuclei()
    idx = np.asarray(keep)
    measurements, centroids_px = measure_nuclei(clean, tile.boxes[idx], coords, offsets, model_mpp, rgb_tile, stains)
    origin = np.asarray(origin_level0, np.float64).reshape(2)
    points = mask_pixel_to_level0(tile.points[idx].astype(np.float64), origin, scale)
    polygons = to_level0(outlines, np.broadcast_to(origin, (len(idx), 2)), scale)
    return SlideNuclei(
        ids=[nucleus_id(slide_key, x, y) for x, y in points],
        points=points,
        centroids=mask_pixel_to_level0(centroids_px, origin, scale),
        classes=tile.classes[idx],
        class_scores=tile.class_scores[idx],
        mask_scores=tile.mask_scores[idx],
        polygons=list(polygons),
        measurements=measurements,
    )
