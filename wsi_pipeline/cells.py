"""Cells (`segment --cell-expansion UM`): each nucleus grown by up to UM µm, never into a neighbour's cell.

The meaning is QuPath's and StarDist's (QuPath's `CellTools.detectionsToCells`): a pixel within UM of
a nucleus boundary goes to the nucleus whose boundary is nearest, i.e. the cell is the nucleus'
UM-buffer cut by the Voronoi diagram of the nuclei's outlines (seeds every `SEED_SPACING_UM` along
each outline), then cut to the run's tissue mask. Unlike QuPath, which clips a nucleus to its cell,
the nucleus is kept whole and other nuclei are cut out of a cell, so a cell always holds its
nucleus and two cells meet only where their nuclei do.

Seamless by construction: cells are computed after stitching, from the final nuclei, on a block
grid of the region (`BLOCK_MODEL_PX` model px, independent of the tiles); a block owns the cells
of the nuclei whose prompt lies in it (the ownership rule, again) and sees every nucleus whose
outline lies within 2 UM of those, which is every nucleus that can take a pixel from them. So a
tiled run's cells equal a one-pass run's whenever its nuclei do, and no UM needs a larger overlap.
Linear in the number of nuclei: each block triangulates only its own neighbourhood.

Stain optical densities of the cell and of its cytoplasm (cell minus nucleus) are read from the
slide again, block by block, at the model's resolution on the tiles' pixel lattice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import shapely

from .atomic import atomic_file
from .geometry import polygon_rows_cols
from .morphometrics import CELL_MEASUREMENTS, feret_diameters
from .stains import StainModel

if TYPE_CHECKING:
    from .journal import Journal
    from .nuclei import SlideNuclei
    from .plan import SlidePlan
    from .slides import SlideReader
    from .tissue import TissueMask

MAX_EXPANSION_UM = 50.0  # a cell is 10-30 µm across; more only costs time (area grows with UM^2)
SEED_SPACING_UM = 1.0  # Voronoi seeds along each nucleus outline (QuPath densifies to 2 px at ~0.25-0.5 µm/px)
JITTER_PX = 1e-3  # seeds moved this little (level-0 px) to break ties GEOS's Voronoi diagram cannot (`jittered`)
BLOCK_MODEL_PX = 2048  # the cell block grid, in model px from the region's corner; fixed, not the tile size
CELLS_FOLDER = "cells"  # in the journal's .work: one file per nucleus part, made while finishing
CELL_PART_FORMAT = 1

@dataclass
class SlideCells:
    """The cells of a list of nuclei, row for row: outline (level-0 px, holes possible) and measurements."""

    polygons: list[shapely.Polygon] = field(default_factory=list)
    measurements: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.polygons)


# ----- geometry ----------------------------------------------------------------------------------

def grow_cells(nuclei: Sequence[shapely.Polygon], owned: Sequence[int], radius: float, spacing: float,
               tissue: shapely.Geometry | None = None) -> list[shapely.Polygon]:
    """The cells of `nuclei[owned]`, grown by up to `radius` (level-0 px) within `tissue` (None: no limit).

    `nuclei` must hold every nucleus within 2 * radius + spacing of the owned ones (their
    neighbourhood), in an order that does not depend on the run (the Voronoi seeds' order breaks
    ties). Each cell: (buffer(radius) ∩ Voronoi region ∩ tissue) minus the other nuclei, plus its
    nucleus, the piece holding the nucleus."""
    polys = np.asarray(nuclei, dtype=object)
    owned = np.asarray(owned, np.int64)
    if not len(owned):
        return []
    rings = shapely.segmentize(shapely.get_exterior_ring(polys), spacing)
    coords, which = shapely.get_coordinates(rings, return_index=True)
    last = np.r_[np.flatnonzero(np.diff(which)), len(which) - 1]
    keep = np.ones(len(coords), bool)
    keep[last] = False  # each ring's closing vertex repeats its first
    coords, which = coords[keep], which[keep]
    # seeds within 1/16 px of each other are one; where two nuclei share one (they touch there) neither
    # keeps it, so no order of the nuclei decides who owns a touching point (their next seeds do)
    key = np.round(coords * 16.0).astype(np.int64)
    _, first, group = np.unique(key, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    lo = np.full(len(first), np.iinfo(np.int64).max, np.int64)
    hi = np.full(len(first), -1, np.int64)
    np.minimum.at(lo, group, which)
    np.maximum.at(hi, group, which)
    first = np.sort(first[lo == hi])
    seeds, owner = jittered(coords[first]), which[first]
    x0, y0 = seeds.min(axis=0) - 4 * radius - spacing
    x1, y1 = seeds.max(axis=0) + 4 * radius + spacing
    frame = shapely.box(x0, y0, x1, y1)
    faces = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=frame, ordered=True))
    if len(faces) != len(seeds):  # GEOS merged seeds it found too close: each seed's face by where it lies
        inside, face = shapely.STRtree(faces).query(shapely.points(seeds), predicate="intersects")
        mapped = np.full(len(seeds), shapely.Polygon(), dtype=object)
        once = np.unique(face, return_index=True)[1]  # a face to one seed only (the first), so faces never overlap
        inside, face = inside[once], face[once]
        mapped[inside] = faces[face]
        faces = mapped
    # near-cocircular seeds (outlines on a pixel grid) give GEOS a few sliver faces that are invalid or
    # wrapped in a GeometryCollection: made valid, their polygons kept
    odd = np.flatnonzero((shapely.get_type_id(faces) != shapely.GeometryType.POLYGON) | ~shapely.is_valid(faces))
    for k in odd:
        fixed = shapely.make_valid(faces[k], method="structure", keep_collapsed=False)
        pieces = [g for g in shapely.get_parts(fixed) if isinstance(g, shapely.Polygon) and not g.is_empty]
        faces[k] = shapely.Polygon() if not pieces else pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], owned)
    ends = np.searchsorted(owner[order], owned, side="right")
    width = int((ends - starts).max())
    table = np.full((len(owned), width), shapely.Polygon(), dtype=object)  # empty polygons pad (None: mixed dims)
    for k, (a, b) in enumerate(zip(starts, ends)):
        table[k, : b - a] = faces[order[a:b]]
    try:  # Voronoi faces tile the plane: a coverage union (linear) rather than an overlay
        regions = shapely.coverage_union_all(table, axis=1)
    except shapely.errors.GEOSException:  # faces GEOS did not node exactly: the general (slower) union
        regions = shapely.union_all(shapely.make_valid(table), axis=1)
    own = polys[owned]
    cells = shapely.intersection(shapely.buffer(own, radius, quad_segs=8), regions)
    if tissue is not None:
        cells = shapely.intersection(cells, tissue)
    tree = shapely.STRtree(polys)
    left, right = tree.query(cells, predicate="intersects")
    others = right != owned[left]
    left, right = left[others], right[others]
    if len(left):
        hit = np.unique(left)
        grouped = shapely.multipolygons(polys[right], indices=np.searchsorted(hit, left))
        grouped = shapely.make_valid(grouped, method="structure", keep_collapsed=False)  # overlapping nuclei: union
        cells[hit] = shapely.difference(cells[hit], grouped)
    cells = shapely.union(cells, own)
    return [_piece_holding(cell, nucleus) for cell, nucleus in zip(cells, own)]


def jittered(xy: np.ndarray, amount: float = JITTER_PX) -> np.ndarray:
    """Seeds moved by up to `amount` px, by a hash of where they lie: outlines traced on a pixel grid
    put many seeds on one circle, where GEOS's Voronoi diagram makes invalid sliver faces; the same
    seed always moves the same way (integer arithmetic: no dependence on run, order or platform).
    The hash reads the position rounded to 1/16 px, so the float noise between a tiled and a one-pass
    run's outlines (~1e-6 px) seldom moves a seed by `amount` (1 seed in ~60000)."""
    bits = np.round(np.asarray(xy, np.float64) * 16.0).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = bits[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    dx = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2**32 - 0.5
    dy = (h >> np.uint64(32)).astype(np.float64) / 2**32 - 0.5
    return xy + 2 * amount * np.stack([dx, dy], axis=1)


def _piece_holding(cell: shapely.Geometry, nucleus: shapely.Polygon) -> shapely.Polygon:
    """The polygon of `cell` that holds the nucleus (slivers cut off by a neighbour or the tissue go)."""
    if isinstance(cell, shapely.Polygon):
        return cell
    parts = [g for g in shapely.get_parts(cell) if isinstance(g, shapely.Polygon) and not g.is_empty]
    if not parts:
        return nucleus
    return max(parts, key=lambda g: (g.intersection(nucleus).area, g.area))


def tissue_polygon(mask: "TissueMask", box: tuple[float, float, float, float]) -> shapely.Geometry | None:
    """The tissue mask's cells under the level-0 `box` (x0, y0, x1, y1) as one geometry, or None when
    all of the box is tissue (no cut needed). Runs of tissue cells along each row make the boxes."""
    ds = float(mask.downsample)
    rows, cols = mask.array.shape
    c0, r0 = max(0, math.floor(box[0] / ds)), max(0, math.floor(box[1] / ds))
    c1, r1 = min(cols, math.ceil(box[2] / ds)), min(rows, math.ceil(box[3] / ds))
    window = np.asarray(mask.array[r0:r1, c0:c1], bool)
    covered = c0 * ds <= box[0] and r0 * ds <= box[1] and c1 * ds >= box[2] and r1 * ds >= box[3]
    if window.size and window.all() and covered:
        return None
    if not window.any():
        return shapely.Polygon()
    padded = np.pad(window, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    rs, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    boxes = shapely.box((c0 + starts) * ds, (r0 + rs) * ds, (c0 + ends) * ds, (r0 + rs + 1) * ds)
    return shapely.union_all(boxes)


# ----- measurements ------------------------------------------------------------------------------

def cell_shapes(
    cells: Sequence[shapely.Polygon], nuclei: Sequence[shapely.Polygon], mpp: float
) -> dict[str, np.ndarray]:
    """Shape columns of the cells (outline polygons, level-0 px; `mpp` µm per level-0 px)."""
    cells_a, nuclei_a = np.asarray(cells, dtype=object), np.asarray(nuclei, dtype=object)
    n = len(cells_a)
    out = {k: np.full(n, np.nan, np.float32) for k in CELL_MEASUREMENTS}
    if not n:
        return out
    area = shapely.area(cells_a)
    perimeter = shapely.length(shapely.get_exterior_ring(cells_a))
    hull = shapely.convex_hull(cells_a)
    nucleus_area = shapely.area(nuclei_a)
    fmax, fmin = feret_diameters(hull)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["cell_area_um2"][:] = area * mpp**2
        out["cell_perimeter_um"][:] = perimeter * mpp
        out["cell_circularity"][:] = np.where(perimeter > 0, np.minimum(4 * np.pi * area / perimeter**2, 1.0), np.nan)
        out["cell_solidity"][:] = np.where(shapely.area(hull) > 0, np.minimum(area / shapely.area(hull), 1.0), np.nan)
        out["cytoplasm_area_um2"][:] = np.maximum(area - nucleus_area, 0.0) * mpp**2
        out["nucleus_cell_area_ratio"][:] = np.where(area > 0, np.minimum(nucleus_area / area, 1.0), np.nan)
    out["cell_feret_max_um"][:] = fmax * mpp
    out["cell_feret_min_um"][:] = fmin * mpp
    return out


def cell_stains(cells: Sequence[shapely.Polygon], nuclei: Sequence[shapely.Polygon], rgb: np.ndarray,
                origin: tuple[float, float], scale: float, stains: StainModel) -> dict[str, np.ndarray]:
    """Mean haematoxylin and eosin OD over each cell's pixels and its cytoplasm's (cell minus
    nucleus): pixels of `rgb` (model resolution, pixel (0, 0) at level-0 `origin`, `scale` level-0
    px per pixel) whose centres fall inside."""
    n = len(cells)
    keys = ("cell_hematoxylin_od_mean", "cell_eosin_od_mean",
            "cytoplasm_hematoxylin_od_mean", "cytoplasm_eosin_od_mean")
    out = {k: np.full(n, np.nan, np.float32) for k in keys}
    if not n:
        return out
    t = stains.table()
    od = t[rgb[..., 0], 0] + t[rgb[..., 1], 1] + t[rgb[..., 2], 2]  # (H, W, 2)
    shape = rgb.shape[:2]
    for i, (cell, nucleus) in enumerate(zip(cells, nuclei)):
        inside = _pixels(cell, shape, origin, scale)
        if inside is None:
            continue
        rr, cc, mask = inside
        values = od[rr[:, None], cc[None, :]][mask]
        if len(values):
            out["cell_hematoxylin_od_mean"][i], out["cell_eosin_od_mean"][i] = values.mean(axis=0)
        held = polygon_rows_cols(nucleus, shape, scale, origin)
        nuc = np.zeros_like(mask)
        sel = (held[0] >= rr[0]) & (held[0] <= rr[-1]) & (held[1] >= cc[0]) & (held[1] <= cc[-1])
        nuc[held[0][sel] - rr[0], held[1][sel] - cc[0]] = True
        ring = od[rr[:, None], cc[None, :]][mask & ~nuc]
        if len(ring):
            out["cytoplasm_hematoxylin_od_mean"][i], out["cytoplasm_eosin_od_mean"][i] = ring.mean(axis=0)
    return out


def _pixels(polygon: shapely.Polygon, shape: tuple[int, int], origin: tuple[float, float], scale: float):
    """(rows, cols, mask) of the pixels whose centres lie in the polygon (holes out), in its box."""
    rows, cols = polygon_rows_cols(polygon, shape, scale, origin)
    if not len(rows):
        return None
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    mask = np.zeros((r1 - r0 + 1, c1 - c0 + 1), bool)
    mask[rows - r0, cols - c0] = True
    for hole in polygon.interiors:
        hr, hc = polygon_rows_cols(shapely.Polygon(hole), shape, scale, origin)
        sel = (hr >= r0) & (hr <= r1) & (hc >= c0) & (hc <= c1)
        mask[hr[sel] - r0, hc[sel] - c0] = False
    return np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), mask


# ----- a slide's cells ---------------------------------------------------------------------------

def radius_px(expansion_um: float, slide_mpp: float) -> float:
    return float(expansion_um) / float(slide_mpp)


def slide_cells(nuclei: "SlideNuclei", plan: "SlidePlan", expansion_um: float, reader: "SlideReader | None",
                block_model_px: int = BLOCK_MODEL_PX) -> SlideCells:
    """The cells of all `nuclei` of a slide (row for row), block by block over the region."""
    n = len(nuclei)
    radius = radius_px(expansion_um, plan.slide_mpp)
    spacing = SEED_SPACING_UM / plan.slide_mpp
    reach = 2 * radius + spacing + 1.0  # a nucleus further from every owned one takes no pixel from them
    polys = np.asarray(nuclei.polygons, dtype=object)
    cells = np.full(n, None, dtype=object)
    measured = {k: np.full(n, np.nan, np.float32) for k in CELL_MEASUREMENTS}
    if not n:
        return SlideCells([], measured)
    side = block_model_px * plan.scale
    bx = np.floor((nuclei.points[:, 0] - plan.roi[0]) / side).astype(np.int64)
    by = np.floor((nuclei.points[:, 1] - plan.roi[1]) / side).astype(np.int64)
    ids = np.asarray(nuclei.ids)
    tree = shapely.STRtree(polys)
    bounds = shapely.bounds(polys)
    by_block = np.lexsort((ids, bx, by))  # blocks row-major; inside one, by id: no dependence on part order
    keys = np.stack([by[by_block], bx[by_block]], axis=1)
    cuts = np.r_[0, np.flatnonzero((np.diff(keys, axis=0) != 0).any(axis=1)) + 1, n]
    for a, b in zip(cuts[:-1], cuts[1:]):
        owned = by_block[a:b]
        lo, hi = bounds[owned, :2].min(axis=0), bounds[owned, 2:].max(axis=0)
        near = tree.query(shapely.box(lo[0] - reach, lo[1] - reach, hi[0] + reach, hi[1] + reach))
        near = near[np.argsort(ids[near], kind="stable")]
        where = {int(g): k for k, g in enumerate(near)}
        window = (lo[0] - radius, lo[1] - radius, hi[0] + radius, hi[1] + radius)
        tissue = tissue_polygon(plan.tissue, window) if plan.tissue is not None else None
        grown = grow_cells(polys[near], [where[int(g)] for g in owned], radius, spacing, tissue)
        for g, c in zip(owned, grown):
            cells[g] = c
        shapes = cell_shapes(grown, polys[owned], plan.slide_mpp)
        for k, v in shapes.items():
            measured[k][owned] = v
        if reader is not None:
            for k, v in _block_stains(grown, polys[owned], plan, reader).items():
                measured[k][owned] = v
    return SlideCells(list(cells), measured)


def _block_stains(
    cells: list[shapely.Polygon], nuclei: np.ndarray, plan: "SlidePlan", reader: "SlideReader"
) -> dict[str, np.ndarray]:
    """The block's cells' stain columns from one read of the slide under them, on the tiles' pixel lattice."""
    x0, y0, x1, y1 = shapely.total_bounds(np.asarray(cells, dtype=object))
    s = plan.scale
    mx0, my0 = math.floor((x0 - plan.roi[0]) / s) - 1, math.floor((y0 - plan.roi[1]) / s) - 1
    mx1, my1 = math.ceil((x1 - plan.roi[0]) / s) + 1, math.ceil((y1 - plan.roi[1]) / s) + 1
    origin = (plan.roi[0] + mx0 * s, plan.roi[1] + my0 * s)
    rgb = reader.read_tolerant(origin[0], origin[1], mx1 - mx0, my1 - my0, s)
    return cell_stains(cells, list(nuclei), np.ascontiguousarray(rgb[..., :3]), origin, s, plan.stains)


# ----- the journal's cell parts ------------------------------------------------------------------

def cells_dir(journal: "Journal") -> Path:
    return journal.work / CELLS_FOLDER


def save_cells(path: Path, cells: SlideCells) -> Path:
    """One part's cells (npz, no pickle; outlines as GeoArrow-style ragged arrays, float64)."""
    geoms = np.asarray(cells.polygons, dtype=object)
    arrays: dict[str, np.ndarray] = {
        "format": np.array([CELL_PART_FORMAT], np.int32), "count": np.array([len(geoms)], np.int64),
    }
    if len(geoms):
        _, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(geoms)
        arrays.update(coords=coords, ring_offsets=ring_offsets, polygon_offsets=polygon_offsets)
    arrays["keys"] = np.array(list(cells.measurements), dtype="U64").reshape(-1)
    for i, v in enumerate(cells.measurements.values()):
        arrays[f"m{i}"] = np.asarray(v, np.float32)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_cells(path: Path) -> SlideCells:
    with np.load(path, allow_pickle=False) as z:
        if int(z["format"][0]) != CELL_PART_FORMAT:
            raise ValueError(f"{path}: cell part format {int(z['format'][0])}, this version reads {CELL_PART_FORMAT}")
        polygons: list[shapely.Polygon] = []
        if int(z["count"][0]):
            offsets = (z["ring_offsets"], z["polygon_offsets"])
            polygons = list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, z["coords"], offsets))
        keys = [str(k) for k in z["keys"]]
        return SlideCells(polygons, {k: z[f"m{i}"] for i, k in enumerate(keys)})


def with_cells(part: "SlideNuclei", cells: SlideCells) -> "SlideNuclei":
    """The part's nuclei carrying their cells: outlines in `cell_polygons`, columns after the nucleus'."""
    if len(cells) != len(part):
        raise ValueError(f"{len(cells)} cells for {len(part)} nuclei")
    part.cell_polygons = list(cells.polygons)
    part.measurements = {**part.measurements, **{k: np.asarray(v, np.float32) for k, v in cells.measurements.items()}}
    return part


def make_cells(plan: "SlidePlan", journal: "Journal", expansion_um: float) -> dict[str, float | int]:
    """Grow the cells of every journaled nucleus and write them beside the parts (`.work/cells/`,
    one file per part, same rows), for the exporters to stream (`iter_parts_with_cells`); returns
    the figures the report gives."""
    import shutil
    import time

    from .nuclei import SlideNuclei, load_part
    from .slides import open_slide

    started = time.monotonic()
    folder = cells_dir(journal)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)  # a finish killed midway: made again from the parts
    folder.mkdir(parents=True)
    paths = journal.parts_in_order()
    parts = [load_part(p) for p in paths]
    nuclei = SlideNuclei.concatenate(parts)
    with open_slide(plan.path) as reader:
        cells = slide_cells(nuclei, plan, expansion_um, reader)
    k = 0
    for path, part in zip(paths, parts):
        rows = slice(k, k + len(part))
        columns = {key: v[rows] for key, v in cells.measurements.items()}
        save_cells(folder / path.name, SlideCells(cells.polygons[rows], columns))
        k += len(part)
    seconds = time.monotonic() - started
    area = cells.measurements["cell_area_um2"]
    return {
        "cells": len(cells),
        "expansion_px": round(radius_px(expansion_um, plan.slide_mpp), 3),
        "median_cell_area_um2": round(float(np.nanmedian(area)), 2) if len(area) else None,
        "seconds": round(seconds, 3),
        "cells_per_second": round(len(cells) / seconds, 1) if seconds > 0 else None,
    }


def iter_parts_with_cells(journal: "Journal") -> Iterator["SlideNuclei"]:
    """The journaled parts in order, each carrying its cells (made by `make_cells`)."""
    from .nuclei import load_part

    folder = cells_dir(journal)
    for path in journal.parts_in_order():
        yield with_cells(load_part(path), load_cells(folder / path.name))
