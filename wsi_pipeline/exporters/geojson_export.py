"""QuPath-ready GeoJSON of nuclei, streamed batch by batch (memory flat in the nucleus count).

What QuPath's reader needs (and peers get wrong, see field notes): one Feature per nucleus
with a UUID `id`; `properties.objectType = "detection"` (a missing type makes heavy,
editable annotations: CellViT#88); `properties.classification = {"name", "color"}` (an
object, not a string); `properties.measurements = {name: number}` with finite numbers only
(JSON has no NaN: a non-finite value is left out, which QuPath shows as missing, i.e. NaN).
Coordinates are level-0 pixels, rounded to 0.01 px.
With cells (`--cell-expansion`, cells.py) a feature is QuPath's cell object: `objectType: "cell"`, the
cell outline as `geometry`, the nucleus as the feature's `nucleusGeometry` (beside `geometry`, not in
`properties`: QuPath's `QuPathTypeAdapters.PathObjectTypeAdapter` reads and writes it there), the
nucleus' measurements named "Nucleus: ..." and the cell's "Cell: ..."/"Cytoplasm: ...", as QuPath's
own cell detection names them. The prompt point goes into
`properties.prompt_point` ([x, y]; QuPath ignores unknown properties, scripts can use it);
class and mask scores are measurements, so QuPath can filter and colour by them.
"""
from __future__ import annotations

import gzip as gzip_module
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..morphometrics import CELL_MEASUREMENTS, MEASUREMENTS
from ..atomic import atomic_file, ensure_output_folder

if TYPE_CHECKING:
    from ..nuclei import SlideNuclei

SCORE_MEASUREMENTS = {"class_score": "Class score", "mask_score": "Mask score"}
NUCLEUS_PREFIX = "Nucleus: "  # cells' nucleus columns, as QuPath's cell detection names them
COORD_DECIMALS = 2


def _short_floats(values: np.ndarray) -> np.ndarray:
    """float32 values as the float64s whose repr is the float32's shortest repr
    (12.3456, not 12.345600128173828): a third of the bytes, no precision lost."""
    values = np.asarray(values)
    if values.dtype == np.float32:
        return values.astype(str).astype(np.float64)
    return values.astype(np.float64)


def _features(
    batch: "SlideNuclei", class_names: Sequence[str], classifications: list[dict], regions: list[dict] | None = None
) -> Iterable[dict]:
    n = len(batch)
    if n == 0:
        return
    bad = (batch.classes < 0) | (batch.classes >= len(class_names))
    if bad.any():
        raise ValueError(f"class index {int(batch.classes[bad][0])} has no name (class_names has {len(class_names)})")
    offsets, coords = batch.polygon_arrays()
    coords = np.round(coords, COORD_DECIMALS)
    cells = batch.cell_polygons
    nucleus_prefix = NUCLEUS_PREFIX if cells is not None else ""
    columns = {
        CELL_MEASUREMENTS[k] if k in CELL_MEASUREMENTS else nucleus_prefix + MEASUREMENTS.get(k, k): _short_floats(v)
        for k, v in batch.measurements.items()
    }
    columns[SCORE_MEASUREMENTS["class_score"]] = _short_floats(batch.class_scores)
    columns[SCORE_MEASUREMENTS["mask_score"]] = _short_floats(batch.mask_scores)
    names = list(columns)
    table = np.stack([columns[k] for k in names], axis=1) if names else np.zeros((n, 0))
    finite = np.isfinite(table)
    rows = table.tolist()
    points = np.round(batch.points, COORD_DECIMALS).tolist()
    region_of = batch.regions.tolist()
    for i in range(n):
        ring = coords[offsets[i] : offsets[i + 1]].tolist()
        ring.append(ring[0])
        values = rows[i]
        measurements = {name: values[j] for j, name in enumerate(names) if finite[i, j]}
        properties = {
            "objectType": "detection" if cells is None else "cell",
            "classification": classifications[int(batch.classes[i])],
            "prompt_point": points[i],
            "measurements": measurements,
        }
        if regions is not None and region_of[i] >= 0:
            properties["metadata"] = regions[region_of[i]]
        geometry = {"type": "Polygon", "coordinates": [ring]}
        if cells is None:
            yield {"type": "Feature", "id": batch.ids[i], "geometry": geometry, "properties": properties}
        else:  # QuPath's cell: the cell outline as the geometry, the nucleus beside it
            cell = {"type": "Polygon", "coordinates": _rings(cells[i])}
            yield {
                "type": "Feature", "id": batch.ids[i], "geometry": cell, "nucleusGeometry": geometry,
                "properties": properties,
            }


def _rings(polygon) -> list[list[list[float]]]:
    """A polygon's rings (exterior first, then holes) as GeoJSON coordinates, rounded like the nuclei."""
    rings = [polygon.exterior, *polygon.interiors]
    return [np.round(np.asarray(r.coords), COORD_DECIMALS).tolist() for r in rings]


def write_geojson(
    path: str | Path,
    batches: Iterable["SlideNuclei"],
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    gzip: bool = False,
    regions: Sequence[dict[str, str]] | None = None,
) -> Path:
    """Stream all nuclei into one FeatureCollection; returns the path written.

    `regions` (each --regions region's `region`, `region_class`, `region_id`: the annotation's
    QuPath id): a nucleus in one carries them as `properties.metadata`, which QuPath 0.5+ reads
    as the object's metadata (strings; its `PathObjectTypeAdapter`), so a script can make the
    nuclei children of their annotation (scripts/qupath/segment_annotations.groovy).

    `gzip` (or a `.gz` name) writes `.geojson.gz`: QuPath's File > Import objects reads
    .geojson/.json/.zip but not .gz (its PathIO.readObjects), so import it with
    scripts/qupath/import_promptnucseg.groovy; GDAL reads it as /vsigzip/<path>.
    The file appears under its name only once complete.
    """
    path = Path(path)
    if gzip and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    use_gzip = path.suffix == ".gz"
    ensure_output_folder(path)
    if len(class_colors) < len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(class_colors)} colours")
    classifications = [{"name": str(name), "color": [int(c) for c in class_colors[i]]} for i, name in enumerate(class_names)]
    region_meta = None if regions is None else [{k: str(v) for k, v in meta.items()} for meta in regions]
    dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        # no name and mtime 0 in the gzip header: the same nuclei give the same bytes
        raw = gzip_module.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=6, mtime=0) if use_gzip else fh
        with io.TextIOWrapper(raw, encoding="ascii", newline="\n") as out:
            out.write('{"type":"FeatureCollection","features":[')
            first = True
            for batch in batches:
                for feature in _features(batch, class_names, classifications, region_meta):
                    out.write("\n" if first else ",\n")
                    out.write(dumps(feature))
                    first = False
            out.write("\n]}\n")
    return path
