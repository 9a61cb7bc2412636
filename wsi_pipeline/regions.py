"""Regions drawn in QuPath (`segment --regions FILE`): only nuclei whose prompt lies inside one are kept.

QuPath's *File > Export objects as GeoJSON* writes annotations as Features, in a
FeatureCollection or (0.2) a bare list, each with `geometry` in level-0 pixels (rectangles and
ellipses become Polygons; a shape with a hole is a Polygon with an inner ring; a split area a
MultiPolygon) and `properties` = {`objectType`: "annotation", `name`, `classification`:
{`name` | `names`, `color`}} (QuPath's `PathObjectTypeAdapter` and `PathClassTypeAdapter`;
0.2 put the type in `id`, e.g. "PathAnnotationObject"). Point and line annotations have no
area and are skipped (counted); detections and cells are refused, since a detection export
would make every nucleus a region. The file is checked against the slide before the model
loads: a region outside the slide, or all of them in another resolution's pixels, is refused.

A nucleus belongs to the run when its prompt point lies in a region (inside or on the edge),
the same prompt-location rule the stitcher's ownership uses; it records the smallest region
holding it (a hot spot drawn inside a tumour wins), while each region's count holds every
nucleus inside it, so overlapping regions each count theirs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import shapely

from .errors import PipelineInputError

MAX_REGIONS_BYTES = 256 << 20  # an annotation export is kilobytes; a detection export can be gigabytes
AREA_TYPES = ("Polygon", "MultiPolygon")
REFUSED_OBJECT_TYPES = ("detection", "cell", "tile", "PathDetectionObject", "PathCellObject", "PathTileObject")
FIX_EXPORT = "in QuPath select the annotations and use File > Export objects as GeoJSON (annotations only), on this slide's image"


@dataclass
class Region:
    """One annotation: its name, class and level-0 area (a shapely Polygon or MultiPolygon)."""

    index: int
    name: str
    class_name: str
    geometry: Any  # shapely Polygon/MultiPolygon, level-0 px
    feature_id: str = ""

    @property
    def label(self) -> str:
        """What a nucleus records: the region's name, else its class, else its number."""
        return self.name or self.class_name or f"region {self.index + 1}"


@dataclass
class RegionSet:
    """The regions of one file, checked against one slide (clipped to it and to --roi)."""

    path: str
    sha256: str
    regions: list[Region]
    skipped: int = 0  # point/line annotations: no area
    clipped: list[int] = field(default_factory=list)  # regions cut at the slide's (or --roi's) edge

    @property
    def union(self) -> Any:
        return shapely.union_all([r.geometry for r in self.regions])

    def bounds(self) -> tuple[int, int, int, int]:
        """The regions' level-0 bounding box as whole pixels (x, y, w, h)."""
        x0, y0, x1, y1 = self.union.bounds
        x, y = math.floor(x0), math.floor(y0)
        return x, y, max(1, math.ceil(x1) - x), max(1, math.ceil(y1) - y)

    def inside(self, xy: np.ndarray) -> np.ndarray:
        """(N, R) bool: which regions hold each level-0 point (edge included)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = np.zeros((len(xy), len(self.regions)), bool)
        for j, r in enumerate(self.regions):
            if len(xy):
                out[:, j] = shapely.intersects_xy(r.geometry, xy[:, 0], xy[:, 1])
        return out

    def assign(self, xy: np.ndarray) -> np.ndarray:
        """Each point's region: the smallest holding it, -1 for none (int16)."""
        hit = self.inside(xy)
        if not hit.size:
            return np.full(len(hit), -1, np.int16)
        areas = np.array([r.geometry.area for r in self.regions])
        ranked = np.where(hit, areas[None, :], np.inf)
        best = ranked.argmin(1)
        return np.where(hit.any(1), best, -1).astype(np.int16)

    def labels(self) -> list[str]:
        return [r.label for r in self.regions]

    def class_names(self) -> list[str]:
        return [r.class_name for r in self.regions]

    def metadata(self) -> list[dict[str, str]]:
        """What each region's nuclei carry in the GeoJSON (`properties.metadata`): label, class, QuPath id."""
        return [{"region": r.label, "region_class": r.class_name, "region_id": r.feature_id} for r in self.regions]

    def fingerprint(self) -> dict[str, Any]:
        """The file's content (a changed drawing is another run) and the clipping applied to it."""
        return {"sha256": self.sha256, "bounds": list(self.bounds()), "regions": len(self.regions)}

    def describe(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "sha256": self.sha256,
            "regions": len(self.regions),
            "features_skipped": self.skipped,
        }


def read_regions(path: str | Path) -> RegionSet:
    """Read QuPath's GeoJSON export of annotations; refuse what holds no area to segment."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_REGIONS_BYTES:
            raise PipelineInputError(
                path,
                f"is {size / 2**20:.0f} MiB, far more than an export of annotations",
                f"check that it holds annotations, not detections: {FIX_EXPORT}",
            )
        raw = path.read_bytes()
    except OSError as err:
        raise PipelineInputError(
            path, f"cannot read the regions file ({err.strerror or err})", "check the path given to --regions"
        ) from err
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PipelineInputError(path, f"is not GeoJSON ({str(err)[:80]})", FIX_EXPORT) from err
    features = _features(path, obj)
    regions: list[Region] = []
    skipped = 0
    for i, feat in enumerate(features):
        if not isinstance(feat, dict):
            raise PipelineInputError(path, f"feature {i} is a {type(feat).__name__}, not a GeoJSON Feature", FIX_EXPORT)
        props = feat.get("properties") if isinstance(feat.get("properties"), dict) else {}
        kind = str(props.get("objectType") or props.get("object_type") or feat.get("id") or "")
        if kind in REFUSED_OBJECT_TYPES:
            raise PipelineInputError(
                path,
                f"feature {i} is a QuPath {kind} object, not an annotation (an export of detections makes every nucleus a region)",
                FIX_EXPORT,
            )
        geom = feat.get("geometry")
        gtype = geom.get("type") if isinstance(geom, dict) else None
        if gtype not in AREA_TYPES:
            if gtype in ("Point", "MultiPoint", "LineString", "MultiLineString"):
                skipped += 1  # a count or a ruler: no area
                continue
            raise PipelineInputError(
                path,
                f"feature {i} has geometry {gtype or 'none'}, not a Polygon or MultiPolygon",
                f"draw the regions as areas (rectangle, ellipse, polygon, brush); {FIX_EXPORT}",
            )
        regions.append(
            Region(
                len(regions),
                str(props.get("name") or ""),
                _class_name(props.get("classification")),
                _geometry(path, i, geom),
                str(feat.get("id") or ""),
            )
        )
    if not regions:
        extra = f" ({skipped} point or line annotations skipped)" if skipped else ""
        raise PipelineInputError(path, f"holds no polygon regions{extra}", f"draw the regions as areas; {FIX_EXPORT}")
    return RegionSet(str(path.resolve()), hashlib.sha256(raw).hexdigest(), regions, skipped)


def _features(path: Path, obj: Any) -> list:
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection" and isinstance(obj.get("features"), list):
        return obj["features"]
    if isinstance(obj, list):  # QuPath 0.2 writes a bare list of features
        return obj
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        return [obj]
    if isinstance(obj, dict) and obj.get("type") in AREA_TYPES:  # a bare geometry
        return [{"type": "Feature", "geometry": obj, "properties": {}}]
    raise PipelineInputError(
        path, "is JSON but not GeoJSON features (no FeatureCollection, Feature or list of features)", FIX_EXPORT
    )


def _class_name(cls: Any) -> str:
    """QuPath's classification: {"name"} or, for a derived class, {"names": [...]} shown as "A: B"."""
    if isinstance(cls, str):
        return cls
    if not isinstance(cls, dict):
        return ""
    if isinstance(cls.get("names"), list):
        return ": ".join(str(n) for n in cls["names"])
    return str(cls.get("name") or "")


def _geometry(path: Path, i: int, geom: dict) -> Any:
    """A feature's geometry as a valid shapely area with holes kept, or a one-line refusal."""
    try:
        shape = shapely.geometry.shape(geom)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise PipelineInputError(
            path,
            f"feature {i} ({geom.get('type')}) has coordinates that are not rings of [x, y] numbers ({str(err)[:60]})",
            FIX_EXPORT,
        ) from err
    coords = shapely.get_coordinates(shape)
    if not len(coords) or not np.isfinite(coords).all():
        raise PipelineInputError(
            path,
            f"feature {i} ({geom.get('type')}) is empty or has coordinates that are not finite numbers",
            FIX_EXPORT,
        )
    if not shape.is_valid:  # a self-crossing brush stroke: QuPath draws it, shapely repairs it
        shape = shapely.make_valid(shape)
        shape = shapely.union_all([g for g in getattr(shape, "geoms", [shape]) if g.geom_type in AREA_TYPES])
    if shape.is_empty or shape.area <= 0:
        raise PipelineInputError(
            path,
            f"feature {i} ({geom.get('type')}) encloses no area",
            f"delete that annotation or redraw it as an area; {FIX_EXPORT}",
        )
    return shape


def check_regions(regions: RegionSet, dimensions: tuple[int, int], roi: tuple[int, int, int, int] | None) -> RegionSet:
    """The regions clipped to the slide (and to --roi when given); refuse a frame that is not this slide's level 0."""
    w0, h0 = dimensions
    where = regions.path
    x0, y0, x1, y1 = regions.union.bounds
    if x0 >= w0 or y0 >= h0 or x1 <= 0 or y1 <= 0:
        fits = (
            next((f for f in (2, 4, 8, 16, 32, 64) if x1 / f <= w0 and y1 / f <= h0), None)
            if x0 >= 0 and y0 >= 0
            else None
        )
        hint = f"; all would fit if divided by {fits}: they look like pixels of a {fits}x larger image" if fits else ""
        raise PipelineInputError(
            where,
            f"its regions (level-0 box {x0:.0f},{y0:.0f} to {x1:.0f},{y1:.0f}) lie outside the slide ({w0}x{h0} level-0 px){hint}",
            f"{FIX_EXPORT} (QuPath writes level-0 pixels)",
        )
    frame = shapely.box(0, 0, w0, h0)
    limit = shapely.box(roi[0], roi[1], roi[0] + roi[2], roi[1] + roi[3]).intersection(frame) if roi else frame
    kept, clipped = [], []
    for r in regions.regions:
        outside = r.geometry.difference(frame).area
        if outside > 0.5 * r.geometry.area:
            raise PipelineInputError(
                where,
                f"region {r.index + 1} ({r.label!r}) lies mostly outside the slide ({w0}x{h0} level-0 px; bounds {_box(r.geometry)})",
                FIX_EXPORT,
            )
        cut = r.geometry.intersection(limit)
        cut = (
            shapely.union_all([g for g in getattr(cut, "geoms", [cut]) if g.geom_type in AREA_TYPES])
            if not cut.is_empty
            else cut
        )
        if cut.is_empty or cut.area <= 0:
            clipped.append(r.index)
            cut = shapely.Polygon()  # outside --roi: reported with area 0, holds no nucleus
        elif not cut.equals(r.geometry):
            clipped.append(r.index)
        kept.append(Region(r.index, r.name, r.class_name, cut, r.feature_id))
    if roi is not None and all(k.geometry.is_empty for k in kept):
        raise PipelineInputError(
            where,
            f"no region overlaps --roi {','.join(str(v) for v in roi)}",
            "drop --roi (the regions choose the area), or widen it over the regions",
        )
    return RegionSet(regions.path, regions.sha256, kept, regions.skipped, clipped)


def _box(geom: Any) -> str:
    return ",".join(f"{v:.0f}" for v in geom.bounds)


def load_plan_regions(
    path: str | Path, dimensions: tuple[int, int], roi: tuple[int, int, int, int] | None
) -> RegionSet:
    """Read and check a regions file for one slide (before any tile is read)."""
    return check_regions(read_regions(path), dimensions, roi)


def tissue_mm2_in(geom: Any, mask: Any | None, mpp: float) -> float | None:
    """Tissue area (mm²) inside a level-0 area, from the tissue mask's pixel centres (None without a mask)."""
    if mask is None:
        return None
    if geom.is_empty:
        return 0.0
    ds = float(mask.downsample)
    x0, y0, x1, y1 = geom.bounds
    c0, r0 = max(0, int(x0 // ds)), max(0, int(y0 // ds))
    c1, r1 = min(mask.array.shape[1], int(math.ceil(x1 / ds))), min(mask.array.shape[0], int(math.ceil(y1 / ds)))
    if c1 <= c0 or r1 <= r0:
        return 0.0
    cx, cy = np.meshgrid((np.arange(c0, c1) + 0.5) * ds, (np.arange(r0, r1) + 0.5) * ds)
    inside = shapely.contains_xy(geom, cx.ravel(), cy.ravel()).reshape(cx.shape)
    return float((inside & mask.array[r0:r1, c0:c1]).sum()) * (ds * mpp) ** 2 / 1e6


def region_summary(
    regions: RegionSet, counts: np.ndarray, class_names: Sequence[str], mpp: float, tissue_mm2: Sequence[float | None]
) -> list[dict[str, Any]]:
    """Per region: name, class, area (mm²), tissue (mm²), nuclei and densities, per class when typed.

    `counts`: (R, C) nuclei per region and class (every nucleus inside the region)."""
    rows = []
    typed = len(class_names) > 1
    for r, row, tissue in zip(regions.regions, counts, tissue_mm2):
        area = r.geometry.area * mpp**2 / 1e6
        total = int(row.sum())
        entry: dict[str, Any] = {
            "index": r.index,
            "name": r.name,
            "class": r.class_name,
            "label": r.label,
            "id": r.feature_id,
            "area_mm2": round(area, 6),
            "tissue_mm2": None if tissue is None else round(tissue, 6),
            "nuclei": total,
            "nuclei_per_mm2": round(total / area, 1) if area > 0 else None,
            "nuclei_per_mm2_tissue": round(total / tissue, 1) if tissue else None,
            "clipped": r.index in regions.clipped,
        }
        if typed:
            entry["class_counts"] = {n: int(c) for n, c in zip(class_names, row)}
            entry["class_per_mm2"] = (
                {n: round(int(c) / area, 1) for n, c in zip(class_names, row)} if area > 0 else None
            )
        rows.append(entry)
    return rows


REGION_TABLE_COLUMNS = ("index", "name", "class", "area_mm2", "tissue_mm2", "nuclei", "nuclei_per_mm2", "nuclei_per_mm2_tissue")


def region_table_rows(summary: list[dict[str, Any]], class_names: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """The per-region table (`<stem>_regions.csv`): the summary's figures, one column per class count and density."""
    typed = len(class_names) > 1
    header = list(REGION_TABLE_COLUMNS)
    if typed:
        header += [f"{n}_nuclei" for n in class_names] + [f"{n}_per_mm2" for n in class_names]
    rows = []
    for e in summary:
        row = [e[k] if e[k] is not None else "" for k in REGION_TABLE_COLUMNS]
        if typed:
            per = e.get("class_per_mm2") or {}
            row += [e["class_counts"][n] for n in class_names] + [per.get(n, "") for n in class_names]
        rows.append(row)
    return header, rows


def write_region_table(path: str | Path, summary: list[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """`<stem>_regions.csv`, whole or not at all."""
    import csv

    from .atomic import atomic_file

    header, rows = region_table_rows(summary, class_names)
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path
