"""All nuclei of a slide as a zarr v3 store of columns, appended batch by batch.

Layout (row i of every array is nucleus i, in batch order; level-0 pixels):
    id (N,) str                     UUIDs, as in the GeoJSON
    point, centroid (N, 2) float64  x, y
    class (N,) int16, class_score, mask_score (N,) float32
    polygon_offsets (N+1,) int64    nucleus i's outline is polygon_coords[o[i]:o[i+1]]
    polygon_coords (M, 2) float64   open rings (closing vertex left out), counter-clockwise
    measurements/<key> (N,) float32 micron units, see attrs["measurements"]
    cell_polygon_offsets (N+1,) int64, cell_ring_offsets (R+1,) int64, cell_polygon_coords (M', 2) float64
                                    with --cell-expansion: each nucleus' cell, GeoArrow's polygon layout
                                    (rings closed, exterior first, then holes; see outputs.ZarrColumns)
    labels (H, W) uint32            optional instance raster, id = row + 1 (0 = none)
Group attrs: the caller's metadata (slide, mpp, model, config, versions, class names and
colours) plus counts and the conventions above.

Columns are appended in whole chunks (`appender.ChunkAppender`: each chunk written once,
memory one chunk per array). Requires zarr>=3 (zarr v3 format).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import shapely

from ..geometry import polygon_rows_cols
from ..morphometrics import ALL_MEASUREMENTS as MEASUREMENTS
from ..outputs import ZarrColumns as C
from .appender import ChunkAppender
from ..atomic import atomic_folder, ensure_output_folder, fsync_folder, partial_name

if TYPE_CHECKING:
    import zarr

    from ..nuclei import SlideNuclei

FORMAT = "promptnucseg-nuclei"
FORMAT_VERSION = 1
COORDINATES = "level-0 pixels, x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1) (QuPath's convention)"


class _LabelPainter:
    """Paints level-0 polygons into a chunked label raster, one chunk read-modify-write
    at a time: memory is one chunk, not the raster."""

    def __init__(self, array: "zarr.Array", downsample: float) -> None:
        self.array = array
        self.downsample = float(downsample)
        self.chunk = tuple(int(c) for c in array.chunks)

    def paint(self, polygons: Sequence[shapely.Polygon], first_id: int) -> None:
        if not len(polygons):
            return
        h, w = self.array.shape
        ch, cw = self.chunk
        d = self.downsample
        bounds = shapely.bounds(np.asarray(polygons, dtype=object))  # xmin, ymin, xmax, ymax
        c0 = np.ceil(bounds[:, 0] / d - 0.5).astype(np.int64)
        c1 = np.floor(bounds[:, 2] / d - 0.5).astype(np.int64)
        r0 = np.ceil(bounds[:, 1] / d - 0.5).astype(np.int64)
        r1 = np.floor(bounds[:, 3] / d - 0.5).astype(np.int64)
        visible = (c1 >= 0) & (r1 >= 0) & (c0 < w) & (r0 < h) & (c0 <= c1) & (r0 <= r1)
        by_chunk: dict[tuple[int, int], list[int]] = {}
        for i in np.flatnonzero(visible):
            for cy in range(max(r0[i], 0) // ch, min(r1[i], h - 1) // ch + 1):
                for cx in range(max(c0[i], 0) // cw, min(c1[i], w - 1) // cw + 1):
                    by_chunk.setdefault((cy, cx), []).append(int(i))
        for (cy, cx), members in sorted(by_chunk.items()):
            y0, x0 = cy * ch, cx * cw
            y1, x1 = min(y0 + ch, h), min(x0 + cw, w)
            block = self.array[y0:y1, x0:x1]
            for i in members:  # ascending: a later nucleus wins an overlap, as in the TIFF
                rr, cc = polygon_rows_cols(polygons[i], block.shape, d, (x0 * d, y0 * d))
                block[rr, cc] = first_id + i
            self.array[y0:y1, x0:x1] = block


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _create_label_array(group: "zarr.Group", name: str, shape_at_level: tuple[int, int], chunk: int) -> "zarr.Array":
    h, w = (int(v) for v in shape_at_level)
    if h <= 0 or w <= 0:
        raise ValueError(f"label raster shape must be positive, got {shape_at_level}")
    return group.create_array(name, shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint32", fill_value=0, dimension_names=["y", "x"])


def write_zarr(
    path: str | Path,
    batches: Iterable["SlideNuclei"],
    metadata: dict[str, Any],
    chunk_rows: int = 65536,
    label_raster: tuple[tuple[int, int], float] | None = None,
) -> Path:
    """Stream nuclei into a new zarr v3 store at `path` (replacing any previous one only
    once complete). `label_raster=((height, width), downsample)` also paints `labels`."""
    import zarr

    path = ensure_output_folder(path)
    class_names = [str(c) for c in metadata.get("class_names", [])]
    with atomic_folder(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        cols: dict[str, ChunkAppender] = {}

        def column(name: str, dtype: Any, width: int | None = None, chunk: int = chunk_rows, group: Any = root) -> ChunkAppender:
            shape = (0,) if width is None else (0, width)
            chunks = (chunk,) if width is None else (chunk, width)
            return ChunkAppender(group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=None if dtype is str else 0))

        cols[C.ID] = column(C.ID, str)
        cols[C.POINT] = column(C.POINT, "float64", 2)
        cols[C.CENTROID] = column(C.CENTROID, "float64", 2)
        cols[C.CLASS] = column(C.CLASS, "int16")
        cols[C.CLASS_SCORE] = column(C.CLASS_SCORE, "float32")
        cols[C.MASK_SCORE] = column(C.MASK_SCORE, "float32")
        if metadata.get("regions"):  # --regions: index into attrs["regions"]["regions"], -1 none
            cols[C.REGION] = column(C.REGION, "int16")
        cols[C.POLYGON_OFFSETS] = column(C.POLYGON_OFFSETS, "int64")
        cols[C.POLYGON_COORDS] = column(C.POLYGON_COORDS, "float64", 2, chunk=4 * chunk_rows)
        cols[C.POLYGON_OFFSETS].add(np.zeros(1, np.int64))
        with_cells = bool(metadata.get("cell_expansion_um"))
        if with_cells:
            cols[C.CELL_POLYGON_OFFSETS] = column(C.CELL_POLYGON_OFFSETS, "int64")
            cols[C.CELL_RING_OFFSETS] = column(C.CELL_RING_OFFSETS, "int64")
            cols[C.CELL_POLYGON_COORDS] = column(C.CELL_POLYGON_COORDS, "float64", 2, chunk=4 * chunk_rows)
            cols[C.CELL_POLYGON_OFFSETS].add(np.zeros(1, np.int64))
            cols[C.CELL_RING_OFFSETS].add(np.zeros(1, np.int64))
        n_rings, n_cell_coords = 0, 0
        mgroup = root.create_group(C.MEASUREMENTS)
        measurement_keys: list[str] | None = None
        painter = None
        if label_raster is not None:
            painter = _LabelPainter(_create_label_array(root, C.LABELS, label_raster[0], 1024), label_raster[1])

        n_nuclei, n_coords = 0, 0
        per_class: dict[int, int] = {}
        for batch in batches:
            keys = list(batch.measurements)
            if measurement_keys is None:
                measurement_keys = keys
                for k in keys:
                    cols[f"{C.MEASUREMENTS}/{k}"] = column(k, "float32", group=mgroup)
            elif keys != measurement_keys:
                raise ValueError(f"batch measurements {keys} differ from the first batch's {measurement_keys}")
            if not len(batch):
                continue
            offsets, coords = batch.polygon_arrays()
            cols[C.ID].add(np.asarray(batch.ids, dtype=str))
            cols[C.POINT].add(batch.points)
            cols[C.CENTROID].add(batch.centroids)
            cols[C.CLASS].add(batch.classes)
            cols[C.CLASS_SCORE].add(batch.class_scores)
            cols[C.MASK_SCORE].add(batch.mask_scores)
            if C.REGION in cols:
                cols[C.REGION].add(batch.regions)
            cols[C.POLYGON_OFFSETS].add(offsets[1:] + n_coords)
            cols[C.POLYGON_COORDS].add(coords)
            for k in measurement_keys:
                cols[f"{C.MEASUREMENTS}/{k}"].add(np.asarray(batch.measurements[k], np.float32))
            if with_cells:
                if batch.cell_polygons is None:
                    raise ValueError("the store has cell columns but a batch has no cells")
                _, ccoords, (rings, polys) = shapely.to_ragged_array(np.asarray(batch.cell_polygons, dtype=object))
                cols[C.CELL_POLYGON_OFFSETS].add(polys[1:] + n_rings)
                cols[C.CELL_RING_OFFSETS].add(rings[1:] + n_cell_coords)
                cols[C.CELL_POLYGON_COORDS].add(ccoords)
                n_rings += len(rings) - 1
                n_cell_coords += len(ccoords)
            if painter is not None:
                painter.paint(batch.polygons, n_nuclei + 1)
            for c, k in zip(*np.unique(batch.classes, return_counts=True)):
                per_class[int(c)] = per_class.get(int(c), 0) + int(k)
            n_nuclei += len(batch)
            n_coords += len(coords)
        for appender in cols.values():
            appender.close()

        named = {(class_names[c] if 0 <= c < len(class_names) else str(c)): k for c, k in sorted(per_class.items())}
        attrs = _json_safe(dict(metadata))
        attrs.update({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "coordinates": COORDINATES,
            "measurements": {k: MEASUREMENTS.get(k, k) for k in measurement_keys or []},
            "counts": {"nuclei": n_nuclei, "polygon_vertices": n_coords, "per_class": named},
        })
        if label_raster is not None:
            attrs[C.LABELS] = {"downsample": float(label_raster[1]), "shape": [int(v) for v in label_raster[0]], "ids": "row index + 1; 0 = background"}
        root.attrs.update(attrs)
    return path


def write_label_raster(
    store_or_path: "str | Path | zarr.Group",
    shape_at_level: tuple[int, int],
    downsample: float,
    batches: Iterable["SlideNuclei"],
    name: str = C.LABELS,
    chunk: int = 1024,
) -> Path:
    """Paint an instance label raster (uint32, id = row index + 1) into an existing local
    zarr store, e.g. one written by `write_zarr`. `shape_at_level` is (height, width) of a
    raster whose pixels are `downsample` level-0 pixels wide. The array is filled under a
    hidden name and renamed into place when complete."""
    import zarr

    if isinstance(store_or_path, zarr.Group):
        root_dir = getattr(store_or_path.store, "root", None)
        if root_dir is None:
            raise ValueError("write_label_raster needs a zarr group on the local file system")
        folder = Path(root_dir) / store_or_path.path
    else:
        folder = Path(store_or_path)
    ensure_output_folder(folder / name)
    group = zarr.open_group(str(folder), mode="r+")
    final, tmp = folder / name, partial_name(folder / name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        painter = _LabelPainter(_create_label_array(group, tmp.name, shape_at_level, chunk), downsample)
        first = 1
        for batch in batches:
            painter.paint(batch.polygons, first)
            first += len(batch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_folder(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    group.attrs.update({name: {"downsample": float(downsample), "shape": [int(v) for v in shape_at_level], "ids": "row index + 1; 0 = background"}})
    return final
