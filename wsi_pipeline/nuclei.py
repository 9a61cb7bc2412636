"""Nuclei of a slide in level-0 coordinates, column-wise, and their on-disk batch "parts".

(A tile's nuclei become these records in `stitch.from_tile_nuclei`.)

A part is one `.npz` per finished batch of tiles. Why npz: numpy-native (no extra
dependency, no pickle: `allow_pickle=False`), columnar, deflate-compressed, and it holds
ragged polygons as plain `polygon_offsets` + `polygon_coords` arrays, so a part round-trips
bit-exactly (float64 coordinates) and loads without building Python objects per vertex.
Parquet would need a nested list type for the polygons and gives nothing the final table
export (`exporters.table_export`) does not already give.

Coordinates: level-0 pixels, x right, y down, pixel (i, j) covering [i, i+1) x [j, j+1)
(QuPath's convention; see `geometry`).
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely

from .atomic import atomic_file
from .geometry import rings_to_polygons
from .morphometrics import empty_measurements

PART_FORMAT = 1
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://promptnucseg/nucleus")
_MEASUREMENT_PREFIX = "measurement:"


def nucleus_id(slide_key: str, point_x: float, point_y: float) -> str:
    """Deterministic UUID of a nucleus: the slide's key and its level-0 prompt point.

    A resumed or distributed run maps the same prompt to the same float coordinates, so it
    gets the same id; three decimals (1/1000 px) absorb nothing but print noise.
    """
    name = f"{slide_key}:{float(point_x) + 0.0:.3f}:{float(point_y) + 0.0:.3f}".encode()
    # uuid.uuid5 by hand (same bytes, 3x faster: a million ids per slide)
    d = bytearray(hashlib.sha1(_ID_NAMESPACE.bytes + name).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50  # version 5
    d[8] = (d[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class SlideNuclei:
    """Nuclei in level-0 slide pixels; row i of every column is nucleus i.

    `polygons` are exterior-only shapely Polygons (counter-clockwise in x, y numbers);
    `measurements` maps a column key (see `morphometrics.MEASUREMENTS`) to an (N,) array
    in micron units.
    """

    ids: list[str] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    class_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    mask_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    polygons: list[shapely.Polygon] = field(default_factory=list)
    measurements: dict[str, np.ndarray] = field(default_factory=empty_measurements)
    regions: np.ndarray | None = None  # (N,) int16 index into the run's --regions, -1 none; all -1 when not given
    cell_polygons: list[shapely.Polygon] | None = None  # with --cell-expansion: each nucleus' cell (cells.py)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.points = np.asarray(self.points, np.float64).reshape(-1, 2)
        self.centroids = np.asarray(self.centroids, np.float64).reshape(-1, 2)
        self.classes = np.asarray(self.classes, np.int16).reshape(-1)
        self.class_scores = np.asarray(self.class_scores, np.float32).reshape(-1)
        self.mask_scores = np.asarray(self.mask_scores, np.float32).reshape(-1)
        self.polygons = list(self.polygons)
        self.measurements = {k: np.asarray(v).reshape(-1) for k, v in self.measurements.items()}
        n = len(self.ids)
        given = self.regions
        self.regions = np.full(n, -1, np.int16) if given is None else np.asarray(given, np.int16).reshape(-1)
        if self.cell_polygons is not None:
            self.cell_polygons = list(self.cell_polygons)
        sizes = {
            **({"cell_polygons": len(self.cell_polygons)} if self.cell_polygons is not None else {}),
            "points": len(self.points), "centroids": len(self.centroids), "classes": len(self.classes),
            "class_scores": len(self.class_scores), "mask_scores": len(self.mask_scores), "polygons": len(self.polygons),
            "regions": len(self.regions),
            **{f"measurements[{k}]": len(v) for k, v in self.measurements.items()},
        }
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"SlideNuclei columns disagree in length with ids ({n}): {wrong}")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: np.ndarray | Sequence[int] | slice) -> "SlideNuclei":
        """A subset (slice, boolean mask or integer indices), in the given order."""
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return SlideNuclei(
            ids=[self.ids[i] for i in idx],
            points=self.points[idx],
            centroids=self.centroids[idx],
            classes=self.classes[idx],
            class_scores=self.class_scores[idx],
            mask_scores=self.mask_scores[idx],
            polygons=[self.polygons[i] for i in idx],
            measurements={k: v[idx] for k, v in self.measurements.items()},
            regions=self.regions[idx],
            cell_polygons=None if self.cell_polygons is None else [self.cell_polygons[i] for i in idx],
        )

    @staticmethod
    def concatenate(parts: Sequence["SlideNuclei"]) -> "SlideNuclei":
        """One SlideNuclei of all parts in order; all parts must share measurement keys."""
        parts = list(parts)
        if not parts:
            return SlideNuclei()
        keys = list(parts[0].measurements)
        for p in parts[1:]:
            if list(p.measurements) != keys:
                raise ValueError(f"cannot concatenate nuclei with different measurements: {keys} vs {list(p.measurements)}")
        return SlideNuclei(
            ids=[i for p in parts for i in p.ids],
            points=np.concatenate([p.points for p in parts]),
            centroids=np.concatenate([p.centroids for p in parts]),
            classes=np.concatenate([p.classes for p in parts]),
            class_scores=np.concatenate([p.class_scores for p in parts]),
            mask_scores=np.concatenate([p.mask_scores for p in parts]),
            polygons=[g for p in parts for g in p.polygons],
            measurements={k: np.concatenate([p.measurements[k] for p in parts]) for k in keys},
            regions=np.concatenate([p.regions for p in parts]),
            cell_polygons=(
                [g for p in parts for g in p.cell_polygons] if all(p.cell_polygons is not None for p in parts) else None
            ),
        )

    def polygon_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Ragged exterior rings: `offsets` (N+1,) int64 and `coords` (M, 2) float64, each
        ring open (its closing vertex, a repeat of the first, is left out)."""
        n = len(self)
        if n == 0:
            return np.zeros(1, np.int64), np.zeros((0, 2))
        polys = np.asarray(self.polygons, dtype=object)
        if np.any(shapely.get_num_interior_rings(polys) > 0):
            raise ValueError("nucleus polygons must have no holes (outlines are exterior rings)")
        coords, which = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
        counts = np.bincount(which, minlength=n)
        ends = np.cumsum(counts)
        keep = np.ones(len(coords), bool)
        keep[ends - 1] = False  # closing vertices
        offsets = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int64)
        return offsets, coords[keep]

    @staticmethod
    def polygons_from_arrays(offsets: np.ndarray, coords: np.ndarray) -> list[shapely.Polygon]:
        return list(rings_to_polygons(np.asarray(coords, np.float64), np.asarray(offsets, np.int64)))


def save_part(path: str | Path, nuclei: SlideNuclei) -> Path:
    """Write one batch's nuclei atomically (tmp + fsync + rename): a kill leaves either the
    whole part or none. Returns the path."""
    path = Path(path)
    offsets, coords = nuclei.polygon_arrays()
    arrays = {
        "format": np.array([PART_FORMAT], np.int32),
        "ids": np.array(nuclei.ids, dtype="S36").reshape(-1),
        "points": nuclei.points,
        "centroids": nuclei.centroids,
        "classes": nuclei.classes,
        "class_scores": nuclei.class_scores,
        "mask_scores": nuclei.mask_scores,
        "polygon_offsets": offsets,
        "polygon_coords": coords,
        "measurement_keys": np.array(list(nuclei.measurements), dtype="U64").reshape(-1),
    }
    if (nuclei.regions >= 0).any():  # only runs with --regions; older parts lack it and read as -1
        arrays["regions"] = nuclei.regions
    for i, values in enumerate(nuclei.measurements.values()):
        arrays[f"{_MEASUREMENT_PREFIX}{i}"] = values
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def load_part(path: str | Path) -> SlideNuclei:
    """Read a part written by `save_part`, exactly as it was saved."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format"][0])
        if version != PART_FORMAT:
            raise ValueError(f"{path}: part format {version}, this version reads {PART_FORMAT}; rerun with --overwrite")
        keys = [str(k) for k in z["measurement_keys"]]
        return SlideNuclei(
            ids=z["ids"].astype("U36").tolist(),
            points=z["points"],
            centroids=z["centroids"],
            classes=z["classes"],
            class_scores=z["class_scores"],
            mask_scores=z["mask_scores"],
            polygons=SlideNuclei.polygons_from_arrays(z["polygon_offsets"], z["polygon_coords"]),
            measurements={k: z[f"{_MEASUREMENT_PREFIX}{i}"] for i, k in enumerate(keys)},
            regions=z["regions"] if "regions" in z.files else None,
        )
