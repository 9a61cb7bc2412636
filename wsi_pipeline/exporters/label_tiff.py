"""`<stem>_labels.tif`: a level-0 instance label image for inputs small enough to hold.

Label k (1-based) is the k-th nucleus in batch order, the same row as in the zarr store
and the table; a later nucleus wins an overlap. uint16 while ids fit, widened to uint32
in place on the 65536th nucleus (one copy), so small images stay small without knowing
the count up front. Tiled, zlib-compressed TIFF: opens in QuPath, Fiji and tifffile.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import shapely

from ..geometry import polygon_rows_cols
from ..atomic import atomic_file, ensure_output_folder

if TYPE_CHECKING:
    from ..nuclei import SlideNuclei


def paint_labels(shape_hw: tuple[int, int], batches: Iterable["SlideNuclei"], downsample: float = 1.0) -> np.ndarray:
    """Instance label image (uint16, or uint32 past 65535 nuclei) of all batches."""
    h, w = (int(v) for v in shape_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"label image shape must be positive, got {shape_hw}")
    labels = np.zeros((h, w), np.uint16)
    next_id = 1
    for batch in batches:
        n = len(batch)
        if n == 0:
            continue
        if next_id + n - 1 > np.iinfo(labels.dtype).max:
            labels = labels.astype(np.uint32)
        bounds = shapely.bounds(np.asarray(batch.polygons, dtype=object))
        visible = (bounds[:, 2] > 0) & (bounds[:, 3] > 0) & (bounds[:, 0] < w * downsample) & (bounds[:, 1] < h * downsample)
        for i in np.flatnonzero(visible):
            rr, cc = polygon_rows_cols(batch.polygons[i], (h, w), downsample)
            labels[rr, cc] = next_id + i
        next_id += n
    return labels


def write_label_tiff(path: str | Path, shape_hw: tuple[int, int], batches: Iterable["SlideNuclei"], tile: int = 256) -> Path:
    """Paint all nuclei at level 0 into an image of `shape_hw` (height, width) and write
    it as a tiled zlib TIFF; the file appears under `path` only once complete."""
    import tifffile

    path = ensure_output_folder(path)
    labels = paint_labels(shape_hw, batches)
    t = (min(tile, _round16(labels.shape[0])), min(tile, _round16(labels.shape[1])))
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", tile=t, photometric="minisblack", metadata=None)
    return path


def _round16(n: int) -> int:
    """TIFF tiles must be multiples of 16 px."""
    return max(16, (n + 15) // 16 * 16)
