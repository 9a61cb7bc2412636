"""A person's points (QuPath GeoJSON or CSV, level-0 px) as prompts for each tile, and what became of them.

QuPath's *Export objects as GeoJSON* writes point annotations as Point or MultiPoint
features, in a FeatureCollection or (older versions) a bare list of features, with the class
in `properties.classification.name`. A CSV gives `x,y[,class]`, with or without a header.
Points classed `Ignore*` (QuPath's ignore class) are not prompts: they delete the nucleus they
fall in. The points are checked against the slide and the region before any work, so a file
in another resolution's pixels (microns, a downsampled export) is refused, not segmented
wrongly. A tile's prompts are all given points inside it, in its pixels (negatives come from
neighbours across the tile border too); ownership by prompt location then keeps each nucleus
once, and each owned point without a nucleus is recorded, never dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import geojson
import numpy as np

from promptnucseg.models.interface import GivenPrompts, Palette, TileNuclei
from .errors import PipelineInputError
from .journal import Journal
from .tiling import Tile

IGNORE_PREFIX = "ignore"  # QuPath's "Ignore*" class, matched case-insensitively
CORNER_MIN_POINTS = 20  # fewer points say too little about the file's scale to refuse it
HEADER_X, HEADER_Y, HEADER_CLASS = ("x", "centroid_x", "x_px"), ("y", "centroid_y", "y_px"), ("class", "classification", "name", "label")


@dataclass
class PointSet:
    """The points of one file in level-0 pixels (continuous: pixel i spans [i, i+1), as in QuPath)."""

    path: Path
    sha256: str
    xy: np.ndarray  # (N, 2) float64
    labels: list[str]  # class name per point, "" when the file gives none
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # class colours the file gives
    skipped: int = 0  # features that are not points (e.g. a region annotation), left out

    @property
    def ignore(self) -> np.ndarray:
        return np.array([lab.lower().startswith(IGNORE_PREFIX) for lab in self.labels], bool)


def read_points(path: str | Path) -> PointSet:
    """Read a QuPath GeoJSON export or a CSV of points; refuse what is neither, or holds none."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_POINTS_BYTES:
            raise PipelineInputError(path, f"is {path.stat().st_size / 2**30:.1f} GiB, far more than any points file (limit {MAX_POINTS_BYTES // 2**30} GiB)", "check that this is the points file meant for --points/--add-points; split a huge set by region (--roi)")
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineInputError(path, f"cannot read the points file ({err.strerror or err})", "check the path given to --points/--add-points") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PipelineInputError(path, "is not a text file, so neither GeoJSON nor CSV", "export the points from QuPath as GeoJSON, or write a CSV with x,y[,class]") from err
    first = text.lstrip()[:1]
    points = _read_geojson(path, text) if first in ("{", "[") else _read_csv(path, text)
    points.sha256 = hashlib.sha256(raw).hexdigest()
    if not len(points.xy):
        extra = f" ({points.skipped} features of other geometry types were skipped)" if points.skipped else ""
        raise PipelineInputError(path, f"holds no points{extra}", "export point annotations (QuPath's Points tool) as GeoJSON, or give a CSV with one x,y[,class] row per nucleus")
    if not np.isfinite(points.xy).all():
        raise PipelineInputError(path, "has coordinates that are not finite numbers", "give level-0 pixel coordinates")
    return points


MAX_POINTS_BYTES = 1 << 30


def _position(path: Path, c: Any, where: str) -> tuple[float, float]:
    """One GeoJSON position [x, y(, z)] as two floats, or a one-line refusal naming it."""
    if not isinstance(c, (list, tuple)) or len(c) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c[:2]):
        raise PipelineInputError(path, f"{where} has a position that is not [x, y] numbers ({json.dumps(c, default=str)[:60]})", "export the points from QuPath again, or give a CSV with x,y[,class] rows")
    return float(c[0]), float(c[1])


def _read_geojson(path: Path, text: str) -> PointSet:
    try:
        obj = geojson.loads(text)
    except RecursionError as err:
        raise PipelineInputError(path, "nests lists or objects too deeply to be GeoJSON points", "export the points from QuPath again (File > Export objects as GeoJSON), or give a CSV") from err
    except (ValueError, TypeError) as err:
        raise PipelineInputError(path, f"is not valid {'JSON' if isinstance(err, json.JSONDecodeError) else 'GeoJSON'} ({err})", "export the points from QuPath again (File > Export objects as GeoJSON), or give a CSV") from err
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        features = obj.get("features") or []
    elif isinstance(obj, list):  # QuPath 0.2 writes a bare list of features
        features = obj
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        features = [obj]
    else:
        raise PipelineInputError(path, "is JSON but not GeoJSON features (no FeatureCollection, Feature or list of features)", "export the points from QuPath with File > Export objects as GeoJSON")
    if not isinstance(features, list):
        raise PipelineInputError(path, f"has 'features' that is a {type(features).__name__}, not a list", "export the points from QuPath with File > Export objects as GeoJSON")
    xy: list[Sequence[float]] = []
    labels: list[str] = []
    colors: dict[str, tuple[int, int, int]] = {}
    skipped = 0
    for i, feat in enumerate(features):
        geom = feat.get("geometry") if isinstance(feat, dict) else None
        kind = geom.get("type") if isinstance(geom, dict) else None
        where = f"feature {i} ({kind})"
        if kind == "Point":
            coords = [geom.get("coordinates")]
        elif kind == "MultiPoint":
            coords = geom.get("coordinates")
            if not isinstance(coords, list):
                raise PipelineInputError(path, f"{where} has coordinates that are not a list of [x, y] positions", "export the points from QuPath again")
        else:  # lines, polygons, collections, null geometry: not points
            skipped += 1
            continue
        props = feat.get("properties")
        name, color = _classification(props if isinstance(props, dict) else {})
        if name and color and name not in colors:
            colors[name] = color
        for c in coords:
            xy.append(_position(path, c, where))
            labels.append(name)
    return PointSet(path, "", np.asarray(xy, np.float64).reshape(-1, 2), labels, colors, skipped)


def _classification(props: dict) -> tuple[str, tuple[int, int, int] | None]:
    """QuPath's class name and colour: `{"name", "color": [r, g, b]}`, or 0.2's `colorRGB` int."""
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, dict):
        return "", None
    name = str(cls.get("name") or "")
    color = cls.get("color")
    if isinstance(color, (list, tuple)) and len(color) >= 3 and all(isinstance(v, (int, float)) and abs(v) < 1e9 for v in color[:3]):
        return name, (int(color[0]) & 255, int(color[1]) & 255, int(color[2]) & 255)
    if isinstance(cls.get("colorRGB"), int):
        v = cls["colorRGB"] & 0xFFFFFF
        return name, ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return name, None


def _read_csv(path: Path, text: str) -> PointSet:
    not_csv = PipelineInputError(path, "is neither GeoJSON nor a CSV of x,y[,class] rows", "export the points from QuPath as GeoJSON, or write a CSV whose columns are x,y and optionally class")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in r)]
    if not rows:
        return PointSet(path, "", np.zeros((0, 2)), [])
    head = [c.strip().lower() for c in rows[0]]
    header = _numbers(rows[0][:2]) is None
    if header:  # find the columns by name
        ix, iy, ic = _column(head, HEADER_X), _column(head, HEADER_Y), _column(head, HEADER_CLASS)
        if ix is None or iy is None:
            raise not_csv
    else:
        ix, iy, ic = 0, 1, 2 if len(rows[0]) > 2 else None
    xy, labels = [], []
    for n, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        vals = _numbers([row[ix] if ix < len(row) else "", row[iy] if iy < len(row) else ""])
        if vals is None:
            raise PipelineInputError(path, f"row {n} ({','.join(row)[:60]!r}) has no numeric x,y", "give one x,y[,class] row per nucleus, in level-0 pixels")
        xy.append(vals)
        labels.append(row[ic].strip() if ic is not None and ic < len(row) else "")
    return PointSet(path, "", np.asarray(xy, np.float64).reshape(-1, 2), labels)


def _numbers(cells: Sequence[str]) -> tuple[float, float] | None:
    try:
        x, y = (float(c) for c in cells)
    except ValueError:
        return None
    return x, y


def _column(head: list[str], names: tuple[str, ...]) -> int | None:
    return next((head.index(n) for n in names if n in head), None)


def check_points(points: PointSet, dimensions: tuple[int, int], roi: tuple[int, int, int, int] | None) -> None:
    """Refuse points outside the slide or region, or that look like another resolution's pixels."""
    w0, h0 = dimensions
    x, y = points.xy[:, 0], points.xy[:, 1]
    where = f"{points.path}"
    outside = (x < 0) | (y < 0) | (x >= w0) | (y >= h0)
    if outside.any():
        fits = next((f for f in (2, 4, 8, 16, 32) if (x.max() / f < w0) and (y.max() / f < h0)), None)
        hint = f"; all would fit if divided by {fits}: they look like pixels of a {fits}x larger image, not this slide's level 0" if fits else ""
        raise PipelineInputError(
            where, f"{int(outside.sum())} of {len(x)} points lie outside the slide ({w0}x{h0} level-0 px), e.g. ({x[outside][0]:.1f}, {y[outside][0]:.1f}){hint}",
            "export the points from this slide's image in QuPath (File > Export objects as GeoJSON uses level-0 pixels), or give CSV coordinates in level-0 pixels",
        )
    rx, ry, rw, rh = roi or (0, 0, w0, h0)
    if roi is not None:
        out_roi = (x < rx) | (y < ry) | (x >= rx + rw) | (y >= ry + rh)
        if out_roi.any():
            raise PipelineInputError(
                where, f"{int(out_roi.sum())} of {len(x)} points lie outside --roi {rx},{ry},{rw},{rh}, e.g. ({x[out_roi][0]:.1f}, {y[out_roi][0]:.1f})",
                "widen --roi to hold every point, drop --roi, or give a points file with only the region's points",
            )
    if len(x) >= CORNER_MIN_POINTS:
        fx, fy = (x.max() - rx) / rw, (y.max() - ry) / rh
        spread = (x.max() - x.min()) >= 0.5 * (x.max() - rx) and (y.max() - y.min()) >= 0.5 * (y.max() - ry)
        if fx <= 0.5 and fy <= 0.5 and spread:
            raise PipelineInputError(
                where, f"all {len(x)} points lie in the top-left {fx:.0%} x {fy:.0%} of the {'region' if roi else 'slide'}, spread over it as if the whole "
                "image were shrunk: they look like coordinates at another resolution (microns, or a downsampled level)",
                f"export them in level-0 pixels; if they really are, pass --roi {int(rx)},{int(ry)},{int(np.ceil(x.max() - rx)) + 1},{int(np.ceil(y.max() - ry)) + 1} around them",
            )


def load_plan_points(path: str | Path, mode: str, dimensions: tuple[int, int], roi: tuple[int, int, int, int] | None, model_classes: Sequence[str]) -> "PlanPoints":
    """Read, check and place a points file for one slide (before any tile is read)."""
    points = read_points(path)
    check_points(points, dimensions, roi)
    return PlanPoints.place(points, mode, model_classes)


@dataclass
class PlanPoints:
    """A checked point set placed on a slide plan: prompts per tile and the classes they add."""

    path: str
    sha256: str
    mode: str  # "only" (--points) or "add" (--add-points)
    xy: np.ndarray  # (N, 2) level-0 px
    classes: np.ndarray  # (N,) index into model classes + `extra_classes`; -1 for ignore points
    labels: list[str]
    extra_classes: tuple[str, ...]  # the file's classes the model does not have, in first-seen order
    extra_colors: tuple[tuple[int, int, int], ...]
    skipped: int = 0

    @classmethod
    def place(cls, points: PointSet, mode: str, model_classes: Sequence[str]) -> "PlanPoints":
        known = {n.lower(): i for i, n in enumerate(model_classes)}
        extra: list[str] = []
        idx = np.zeros(len(points.labels), np.int16)
        for i, (lab, ign) in enumerate(zip(points.labels, points.ignore)):
            if ign:
                idx[i] = -1
            elif lab and lab.lower() not in known:
                if lab not in extra:
                    extra.append(lab)
                idx[i] = len(model_classes) + extra.index(lab)
            else:  # no class: the model's first (for a one-class model, its only) class
                idx[i] = known.get(lab.lower(), 0)
        colors = tuple(points.colors.get(n) or class_color(n) for n in extra)
        return cls(str(points.path), points.sha256, mode, points.xy, idx, list(points.labels), tuple(extra), colors, points.skipped)

    @property
    def prompts_mask(self) -> np.ndarray:
        return self.classes >= 0

    def fingerprint(self) -> dict[str, str]:
        return {"sha256": self.sha256, "mode": self.mode}

    def region_xy(self, roi: tuple[int, int, int, int], scale: float) -> np.ndarray:
        """Prompt points in the region's continuous model-pixel frame (where tile cores live)."""
        return (self.xy[self.prompts_mask] - np.asarray(roi[:2], np.float64)) / scale

    def on_tile(self, tile: Tile, origin: tuple[float, float], scale: float) -> "TilePoints":
        """The points inside a tile as it was read (`origin`: level-0 corner, `scale`: level-0 px per tile px)."""
        tile_xy = (self.xy - np.asarray(origin, np.float64)) / scale - 0.5  # inverse of mask_pixel_to_level0
        inside = (tile_xy[:, 0] >= -0.5) & (tile_xy[:, 1] >= -0.5) & (tile_xy[:, 0] < tile.w - 0.5) & (tile_xy[:, 1] < tile.h - 0.5)
        prompt = inside & self.prompts_mask
        ids = np.flatnonzero(prompt)
        return TilePoints(
            GivenPrompts(tile_xy[ids], self.classes[ids], self.mode), ids, tile_xy[inside & ~self.prompts_mask].astype(np.float32),
        )


@dataclass
class TilePoints:
    """One tile's share of the points: prompts (with their ids in the file) and ignore points."""

    prompts: GivenPrompts
    ids: np.ndarray  # (P,) index of each prompt in the points file
    ignore_xy: np.ndarray  # (Q, 2) tile px

    def apply(self, owned: TileNuclei, owned_prompt: np.ndarray) -> tuple[TileNuclei, list[int], int]:
        """(nuclei left after Ignore* deletions, ids of owned prompts with no nucleus, nuclei deleted).

        `owned_prompt`: which of this tile's prompts the tile owns (the ownership rule, applied
        by the caller to the prompts exactly as to nuclei).
        """
        got = {tuple(p) for p in owned.points.tolist()}  # a given point comes back unchanged (GivenPrompts)
        missing = [int(i) for i, p, own in zip(self.ids, self.prompts.points.tolist(), owned_prompt) if own and tuple(p) not in got]
        if not len(self.ignore_xy) or not len(owned):
            return owned, missing, 0
        hit = np.zeros(len(owned), bool)
        px = np.rint(self.ignore_xy).astype(np.int64)
        for n, ((x0, y0, x1, y1), m) in enumerate(zip(owned.boxes.tolist(), owned.masks)):
            inb = (px[:, 0] >= x0) & (px[:, 0] < x1) & (px[:, 1] >= y0) & (px[:, 1] < y1)
            hit[n] = bool(inb.any() and m[px[inb, 1] - y0, px[inb, 0] - x0].any())
        return owned.select(~hit), missing, int(hit.sum())


def class_color(name: str) -> tuple[int, int, int]:
    """A stable colour for a class the file names without one."""
    v = zlib.crc32(name.encode())
    return (64 + (v & 127), 64 + ((v >> 8) & 127), 64 + ((v >> 16) & 127))


def output_classes(points: PlanPoints | None, model: Palette) -> Palette:
    """The run's classes and colours: the model's, then the classes only the points file names."""
    return model if points is None else model.extended(points.extra_classes, points.extra_colors)


def points_report(points: PlanPoints, journal: Journal) -> dict[str, Any]:
    """What became of the given points, from every journaled batch (so it survives a resume)."""
    missing: list[int] = []
    deleted = 0
    for rec in journal.done().values():
        missing += rec.get("points_missing", [])
        deleted += int(rec.get("points_deleted", 0))
    prompts = int(points.prompts_mask.sum())
    return {
        "file": points.path, "sha256": points.sha256, "mode": points.mode,
        "points": len(points.xy), "prompts": prompts, "ignore_points": len(points.xy) - prompts,
        "features_skipped": points.skipped,  # features that are not points
        "nuclei_from_points": prompts - len(missing), "without_nucleus": len(missing),
        "nuclei_deleted_by_ignore": deleted,
        "without_nucleus_points": [
            {"index": int(i), "x": round(float(points.xy[i, 0]), 2), "y": round(float(points.xy[i, 1]), 2), "class": points.labels[i]} for i in sorted(missing)
        ],
    }
