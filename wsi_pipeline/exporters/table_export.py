"""One row per nucleus (id, point, centroid, class, scores, measurements) for pandas/R/Excel.

Parquet through pyarrow's streaming `ParquetWriter` (rows are written in whole row groups
of 65536, so memory stays at one row group and the file does not depend on batch sizes);
CSV when pyarrow is missing, or when asked (`engine="csv"`), written row-batch by
row-batch with the standard library. Both hold the same columns in the same order; CSV
leaves a non-finite value empty (what pandas and R read as missing).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import numpy as np

from ..atomic import atomic_file, ensure_output_folder

if TYPE_CHECKING:
    from ..nuclei import SlideNuclei

# column -> parquet type name; measurements follow as float32
BASE_COLUMNS = {
    "id": "string", "point_x": "float64", "point_y": "float64", "centroid_x": "float64", "centroid_y": "float64",
    "class": "int16", "class_name": "string", "class_score": "float32", "mask_score": "float32",
}
REGION_COLUMNS = {"region": "string", "region_class": "string"}  # with --regions only


ROW_GROUP_ROWS = 65536  # rows held back until a whole Parquet row group is full


def _names_of(index: np.ndarray, names: Sequence[str]) -> list[str]:
    """Each index's name; "" for -1 (no region) or an index without a name."""
    table = np.asarray(list(names) + [""], dtype=object)
    return list(table[np.where((index >= 0) & (index < len(names)), index, len(names))])


RegionNames = tuple[Sequence[str], Sequence[str]]  # each --regions region's label and class


def _columns(
    batch: "SlideNuclei", class_names: Sequence[str] | None, regions: RegionNames | None = None
) -> dict[str, np.ndarray | list]:
    cls = batch.classes
    cols: dict[str, np.ndarray | list] = {
        "id": batch.ids,
        "point_x": batch.points[:, 0],
        "point_y": batch.points[:, 1],
        "centroid_x": batch.centroids[:, 0],
        "centroid_y": batch.centroids[:, 1],
        "class": cls,
    }
    if class_names:  # without names the column would only repeat `class`
        names = np.asarray(list(class_names) + [""], dtype=object)
        cols["class_name"] = list(names[np.where((cls >= 0) & (cls < len(class_names)), cls, len(class_names))])
    cols["class_score"] = batch.class_scores
    cols["mask_score"] = batch.mask_scores
    if regions is not None:  # --regions: the region holding the prompt (its name) and its QuPath class
        cols["region"] = _names_of(batch.regions, regions[0])
        cols["region_class"] = _names_of(batch.regions, regions[1])
    for k, v in batch.measurements.items():
        if k in cols:
            raise ValueError(f"measurement {k!r} clashes with a table column")
        cols[k] = np.asarray(v, np.float32)
    return cols


def _pyarrow_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_table(
    path: str | Path,
    batches: Iterable["SlideNuclei"],
    engine: Literal["auto", "parquet", "csv"] = "auto",
    class_names: Sequence[str] | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    regions: RegionNames | None = None,
) -> Path:
    """Write the nucleus table; returns the path written (`.csv` beside a requested
    `.parquet` name when CSV is used). `class_names` adds a `class_name` column, `regions`
    (each region's label and class) `region` and `region_class` columns."""
    path = Path(path)
    if engine not in ("auto", "parquet", "csv"):
        raise ValueError(f"engine must be auto, parquet or csv, not {engine!r}")
    use_parquet = engine == "parquet" or (engine == "auto" and _pyarrow_available())
    if engine == "parquet" and not _pyarrow_available():
        raise ImportError("writing Parquet needs pyarrow: pip install pyarrow, or use engine='csv'")
    if not use_parquet:
        path = path.with_suffix(".csv")
    ensure_output_folder(path)
    with atomic_file(path) as tmp:
        if use_parquet:
            _write_parquet(tmp, batches, class_names, row_group_rows, regions)
        else:
            _write_csv(tmp, batches, class_names, regions)
    return path


def _write_parquet(
    tmp: Path, batches: Iterable["SlideNuclei"], class_names: Sequence[str] | None,
    row_group_rows: int = ROW_GROUP_ROWS,
    regions: RegionNames | None = None,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    schema = None
    pending: list = []
    count = 0
    try:
        for batch in batches:
            cols = _columns(batch, class_names, regions)
            if schema is None:
                types = {**BASE_COLUMNS, **REGION_COLUMNS}
                schema = pa.schema([pa.field(k, pa.type_for_alias(types.get(k, "float32"))) for k in cols])
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            elif list(cols) != schema.names:
                raise ValueError(f"batch columns {list(cols)} differ from the first batch's {schema.names}")
            if len(batch):
                pending.append(pa.Table.from_pydict(cols, schema=schema))
                count += len(batch)
            if count >= row_group_rows:  # whole row groups only: the layout does not depend on batch sizes
                table = pa.concat_tables(pending)
                k = (count // row_group_rows) * row_group_rows
                writer.write_table(table.slice(0, k), row_group_size=row_group_rows)
                pending, count = [table.slice(k)], count - k
        if writer is None:  # no batches at all: an empty table with the base columns
            schema = pa.schema([pa.field(k, pa.type_for_alias(t)) for k, t in BASE_COLUMNS.items()])
            writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        if count:
            writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
    finally:
        if writer is not None:
            writer.close()


def _text(values: np.ndarray | list) -> list[str]:
    """Shortest round-trip text of each value; empty for NaN/inf."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        out = arr.astype(str).astype(object)
        out[~np.isfinite(arr)] = ""
        return list(out)
    return [str(v) for v in (arr.tolist() if isinstance(values, np.ndarray) else values)]


def _write_csv(
    tmp: Path, batches: Iterable["SlideNuclei"], class_names: Sequence[str] | None, regions: RegionNames | None = None
) -> None:
    header: list[str] | None = None
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for batch in batches:
            cols = _columns(batch, class_names, regions)
            if header is None:
                header = list(cols)
                writer.writerow(header)
            elif list(cols) != header:
                raise ValueError(f"batch columns {list(cols)} differ from the first batch's {header}")
            if len(batch):
                writer.writerows(zip(*(_text(v) for v in cols.values())))
        if header is None:
            writer.writerow(list(BASE_COLUMNS))
