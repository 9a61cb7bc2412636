"""Exporters on real files: QuPath rules, zarr/table/TIFF agreement, streaming, atomicity."""
from __future__ import annotations

import csv
import gc
import gzip
import json
import subprocess
import sys
import uuid
import weakref
from pathlib import Path
from typing import Iterator

import geojson
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile
import zarr

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.exporters import write_anndata, write_geojson, write_label_raster, write_label_tiff, write_table, write_zarr
from promptnucseg.wsi_pipeline.exporters.label_tiff import paint_labels
from promptnucseg.wsi_pipeline.morphometrics import MEASUREMENT_UNITS, MEASUREMENTS
from promptnucseg.wsi_pipeline.nuclei import SlideNuclei
from test_records import synthetic_slide_nuclei

CLASS_NAMES = ("Neoplastic", "Inflammatory", "Connective")
CLASS_COLORS = ((255, 0, 0), (0, 160, 0), (0, 0, 255))
N_BATCHES, BATCH = 200, 50
SLIDE_HW = (3000, 3500)  # level-0 height, width: 5 x 5 tiles of 400 px at 1.2 level-0 px per px, from (1000, 500)


@pytest.fixture(scope="module")
def nuclei() -> SlideNuclei:
    """10,000 nuclei (from_tile_nuclei on 25 synthetic tiles), two with NaN/inf measurements."""
    out = synthetic_slide_nuclei(n_tiles=25, size=400, scale=1.2, seed=0, cols=5, step=20)
    assert len(out) == N_BATCHES * BATCH and len(set(out.ids)) == len(out)
    assert out.polygons and max(p.bounds[3] for p in out.polygons) < SLIDE_HW[0] and max(p.bounds[2] for p in out.polygons) < SLIDE_HW[1]
    out.measurements["solidity"][7] = np.nan
    out.measurements["eccentricity"][11] = np.inf
    return out


def batches_of(nuclei: SlideNuclei, size: int) -> Iterator[SlideNuclei]:
    for a in range(0, len(nuclei), size):
        yield nuclei.select(slice(a, a + size))


META = {"slide": "synthetic.svs", "mpp": 0.25, "model": {"name": "test"}, "config": {"tile": 1024, "roi": (0, 0, 10, 10)}, "versions": {"numpy": np.__version__}, "class_names": list(CLASS_NAMES), "class_colors": [list(c) for c in CLASS_COLORS]}


def read_geojson(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="ascii") as fh:
        text = fh.read()
    # strict JSON: NaN/Infinity would be refused here as they are by QuPath's parser
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"non-JSON constant {c}")))


# ---------------------------------------------------------------- GeoJSON


def test_geojson_follows_qupath_rules(tmp_path: Path, nuclei: SlideNuclei):
    path = write_geojson(tmp_path / "slide.geojson", batches_of(nuclei, BATCH), CLASS_NAMES, CLASS_COLORS)
    doc = read_geojson(path)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(nuclei)
    assert geojson.loads(path.read_text()).is_valid
    for i, f in enumerate(doc["features"]):
        assert f["type"] == "Feature"
        assert f["id"] == nuclei.ids[i] and str(uuid.UUID(f["id"])) == f["id"]
        props = f["properties"]
        assert props["objectType"] == "detection"
        c = int(nuclei.classes[i])
        assert props["classification"] == {"name": CLASS_NAMES[c], "color": list(CLASS_COLORS[c])}
        assert props["prompt_point"] == pytest.approx(nuclei.points[i], abs=0.006)
        m = props["measurements"]
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in m.values())
        assert m["Class score"] == pytest.approx(float(nuclei.class_scores[i]), rel=1e-6)
        assert m["Mask score"] == pytest.approx(float(nuclei.mask_scores[i]), rel=1e-6)
        assert f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"]) == 1
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        poly = shapely.geometry.shape(f["geometry"])
        assert poly.is_valid, i
        assert poly.equals_exact(nuclei.polygons[i], tolerance=0.006)
    full = doc["features"][0]["properties"]["measurements"]
    assert set(full) == set(MEASUREMENTS.values()) | {"Class score", "Mask score"}
    assert full["Area µm^2"] == pytest.approx(float(nuclei.measurements["area_um2"][0]), rel=1e-6)
    # non-finite values are left out rather than written as NaN (invalid JSON)
    assert "Solidity" not in doc["features"][7]["properties"]["measurements"]
    assert "Eccentricity" not in doc["features"][11]["properties"]["measurements"]


def test_geojson_gzip_is_the_same_document_and_reproducible(tmp_path: Path, nuclei: SlideNuclei):
    part = nuclei.select(slice(0, 300))
    plain = write_geojson(tmp_path / "a.geojson", [part], CLASS_NAMES, CLASS_COLORS)
    gz = write_geojson(tmp_path / "b.geojson", [part], CLASS_NAMES, CLASS_COLORS, gzip=True)
    assert gz.name == "b.geojson.gz"
    assert read_geojson(gz) == read_geojson(plain)
    again = write_geojson(tmp_path / "c.geojson.gz", [part], CLASS_NAMES, CLASS_COLORS)
    assert again.read_bytes() == gz.read_bytes()
    with pytest.raises(ValueError, match="class index 7"):
        bad = part.select([0])
        bad.classes[:] = 7
        write_geojson(tmp_path / "bad.geojson", [bad], CLASS_NAMES, CLASS_COLORS)
    assert not (tmp_path / "bad.geojson").exists()


# ---------------------------------------------------------------- zarr


def test_zarr_matches_geojson_and_metadata(tmp_path: Path, nuclei: SlideNuclei):
    gj = read_geojson(write_geojson(tmp_path / "s.geojson", batches_of(nuclei, BATCH), CLASS_NAMES, CLASS_COLORS))
    path = write_zarr(tmp_path / "s.zarr", batches_of(nuclei, BATCH), META, chunk_rows=4096)
    root = zarr.open_group(str(path), mode="r")
    n = len(nuclei)
    assert root.attrs["counts"]["nuclei"] == n == len(gj["features"])
    per_class = {CLASS_NAMES[c]: int(k) for c, k in zip(*np.unique(nuclei.classes, return_counts=True))}
    assert root.attrs["counts"]["per_class"] == per_class
    assert root.attrs["slide"] == "synthetic.svs" and root.attrs["config"]["roi"] == [0, 0, 10, 10]
    assert root.attrs["class_colors"] == [list(c) for c in CLASS_COLORS]
    assert root.attrs["measurements"] == MEASUREMENTS
    assert root["id"][:].tolist() == [f["id"] for f in gj["features"]]
    assert np.array_equal(root["centroid"][:], nuclei.centroids)
    assert np.array_equal(root["point"][:], nuclei.points)
    assert np.array_equal(root["class"][:], nuclei.classes)
    assert root["class"].dtype == np.int16 and root["mask_score"].dtype == np.float32
    offsets, coords = root["polygon_offsets"][:], root["polygon_coords"][:]
    assert offsets.shape == (n + 1,) and offsets[0] == 0 and offsets[-1] == len(coords)
    for i in range(0, n, 97):
        ring = np.asarray(gj["features"][i]["geometry"]["coordinates"][0])
        assert np.allclose(coords[offsets[i] : offsets[i + 1]], ring[:-1], atol=0.006)
    for k in MEASUREMENTS:
        assert np.array_equal(root["measurements"][k][:], nuclei.measurements[k], equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.geojson", "s.zarr"]


def test_zarr_label_raster_matches_painted_polygons(tmp_path: Path, nuclei: SlideNuclei):
    part = nuclei.select(slice(0, 2000))
    path = write_zarr(tmp_path / "l.zarr", batches_of(part, 170), META, chunk_rows=512, label_raster=(SLIDE_HW, 1.0))
    labels = zarr.open_group(str(path), mode="r")["labels"]
    assert labels.dtype == np.uint32 and labels.chunks == (1024, 1024) and labels.shape == SLIDE_HW
    expected = paint_labels(SLIDE_HW, [part])
    assert np.array_equal(labels[:], expected)
    # standalone, at a 4x downsample, into the same store
    write_label_raster(path, (SLIDE_HW[0] // 4, SLIDE_HW[1] // 4), 4.0, batches_of(part, 300), name="labels_4x", chunk=128)
    root = zarr.open_group(str(path), mode="r")
    small = root["labels_4x"][:]
    assert np.array_equal(small, paint_labels((SLIDE_HW[0] // 4, SLIDE_HW[1] // 4), [part], downsample=4.0))
    assert root.attrs["labels_4x"]["downsample"] == 4.0
    assert not [p for p in path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- tables


def test_parquet_and_csv_fallback_hold_the_same_rows(tmp_path: Path, nuclei: SlideNuclei):
    pq_path = write_table(tmp_path / "t_nuclei.parquet", batches_of(nuclei, BATCH), class_names=CLASS_NAMES)
    csv_path = write_table(tmp_path / "t_nuclei.parquet", batches_of(nuclei, BATCH), engine="csv", class_names=CLASS_NAMES)
    assert pq_path.suffix == ".parquet" and csv_path == tmp_path / "t_nuclei.csv"
    table = pq.read_table(pq_path)
    assert table.num_rows == len(nuclei)
    assert table.column_names[:9] == ["id", "point_x", "point_y", "centroid_x", "centroid_y", "class", "class_name", "class_score", "mask_score"]
    assert table.column_names[9:] == list(MEASUREMENTS)
    assert table["id"].to_pylist() == nuclei.ids
    assert np.array_equal(table["centroid_x"].to_numpy(), nuclei.centroids[:, 0])
    assert table["class_name"].to_pylist() == [CLASS_NAMES[c] for c in nuclei.classes]
    for k in MEASUREMENTS:
        col = table[k].to_numpy()
        assert col.dtype == np.float32 and np.array_equal(col, nuclei.measurements[k], equal_nan=True)
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == table.column_names and len(rows) == len(nuclei) + 1
    cols = list(zip(*rows[1:]))
    for j, name in enumerate(rows[0]):
        ref = table[name].to_numpy(zero_copy_only=False)
        if name in ("id", "class_name"):
            assert list(cols[j]) == list(ref)
        else:
            got = np.array([float(v) if v else np.nan for v in cols[j]], dtype=ref.dtype)
            finite = np.isfinite(ref)
            assert np.array_equal(got[finite], ref[finite]), name  # shortest repr round-trips exactly
            assert np.all(np.isnan(got[~finite])), name  # NaN and inf are left empty
    assert cols[rows[0].index("eccentricity")][11] == ""


def test_table_without_class_names_and_without_batches(tmp_path: Path, nuclei: SlideNuclei):
    path = write_table(tmp_path / "x.parquet", [nuclei.select(slice(0, 5))])
    assert "class_name" not in pq.read_table(path).column_names
    empty = write_table(tmp_path / "e.parquet", [])
    assert pq.read_table(empty).num_rows == 0
    empty_csv = write_table(tmp_path / "e.parquet", iter([SlideNuclei()]), engine="csv")
    assert empty_csv.read_text().splitlines() == [",".join(["id", "point_x", "point_y", "centroid_x", "centroid_y", "class", "class_score", "mask_score", *MEASUREMENTS])]


# ---------------------------------------------------------------- label TIFF


def test_label_tiff_matches_the_polygons(tmp_path: Path, nuclei: SlideNuclei):
    part = nuclei.select(slice(0, 3000))
    path = write_label_tiff(tmp_path / "s_labels.tif", SLIDE_HW, batches_of(part, 64))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.is_tiled
        labels = page.asarray()
    assert labels.dtype == np.uint16 and labels.shape == SLIDE_HW
    ids = np.unique(labels)
    assert ids[0] == 0 and ids[-1] <= len(part)
    rows, cols = np.nonzero(labels)
    owner = labels[rows, cols].astype(np.int64) - 1
    # every labelled pixel centre lies inside its own polygon
    inside = np.zeros(len(owner), bool)
    for k in np.unique(owner):
        sel = owner == k
        inside[sel] = shapely.contains_xy(part.polygons[k], cols[sel] + 0.5, rows[sel] + 0.5) | shapely.intersects_xy(part.polygons[k].boundary, cols[sel] + 0.5, rows[sel] + 0.5)
    assert inside.all()
    # every pixel centre inside polygon k carries k or a later (painted-over) id
    for k in range(0, len(part), 37):
        x0, y0, x1, y1 = part.polygons[k].bounds
        yy, xx = np.mgrid[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        hit = shapely.contains_xy(part.polygons[k], xx + 0.5, yy + 0.5)
        assert np.all(labels[yy[hit], xx[hit]] >= k + 1)
        assert np.any(labels[yy[hit], xx[hit]] == k + 1) or k + 1 < len(part)


def test_label_tiff_widens_to_uint32_past_65535_nuclei(tmp_path: Path):
    n, side = 70_000, 280  # 2x2 px squares on a 280 x 1000 grid
    ks = np.arange(n)
    x, y = (ks % side) * 3.0 + 1, (ks // side) * 3.0 + 1
    polygons = list(shapely.box(x, y, x + 2, y + 2))
    tiny = SlideNuclei(ids=[str(k) for k in ks], points=np.c_[x, y], centroids=np.c_[x + 1, y + 1], classes=np.zeros(n), class_scores=np.ones(n), mask_scores=np.ones(n), polygons=polygons, measurements={})
    path = write_label_tiff(tmp_path / "big_labels.tif", (int(y.max()) + 4, side * 3 + 1), batches_of(tiny, 10_000))
    labels = tifffile.imread(path)
    assert labels.dtype == np.uint32
    assert labels[int(y[-1]) + 1, int(x[-1]) + 1] == n and labels[2, 2] == 1
    assert len(np.unique(labels)) == n + 1


def test_anndata_holds_the_table_rows_with_units_and_level0_centroids(tmp_path: Path, nuclei: SlideNuclei):
    anndata = pytest.importorskip("anndata", reason="the anndata extra (pip install promptnucseg[anndata]) is not installed")
    # chunks of 1536 rows across batches of 50: whole chunks, a partial last one
    path = write_anndata(tmp_path / "s.h5ad", batches_of(nuclei, BATCH), CLASS_NAMES, CLASS_COLORS, 0.25, META, chunk_rows=1536)
    adata = anndata.read_h5ad(path)
    assert adata.shape == (len(nuclei), len(MEASUREMENTS))
    assert list(adata.obs_names) == nuclei.ids and adata.obs.index.name == "id"
    assert list(adata.obs["class"].cat.categories) == list(CLASS_NAMES)
    np.testing.assert_array_equal(adata.obs["class"].cat.codes.to_numpy(), nuclei.classes)
    np.testing.assert_array_equal(adata.obs["class_score"].to_numpy(), nuclei.class_scores.astype(np.float32))
    np.testing.assert_array_equal(adata.obs["mask_score"].to_numpy(), nuclei.mask_scores.astype(np.float32))
    assert list(adata.var_names) == list(MEASUREMENTS) and list(adata.var["unit"]) == [MEASUREMENT_UNITS[k] for k in MEASUREMENTS]
    for j, k in enumerate(MEASUREMENTS):  # NaN/inf kept as they are (the zarr store keeps them too)
        np.testing.assert_array_equal(adata.X[:, j], nuclei.measurements[k].astype(np.float32))
    np.testing.assert_array_equal(adata.obsm["spatial"], nuclei.centroids)
    assert adata.uns["mpp"] == 0.25 and list(adata.uns["class_colors"]) == ["#ff0000", "#00a000", "#0000ff"]
    assert json.loads(adata.uns["promptnucseg"])["slide"] == "synthetic.svs"
    backed = anndata.read_h5ad(path, backed="r")  # the file is usable without loading X
    assert backed.shape == adata.shape
    backed.file.close()


def test_anndata_refuses_a_batch_with_other_measurements(tmp_path: Path, nuclei: SlideNuclei):
    pytest.importorskip("anndata", reason="the anndata extra is not installed")
    odd = nuclei.select(slice(0, 10))
    odd.measurements = {k: v for k, v in odd.measurements.items() if k != "solidity"}
    with pytest.raises(ValueError, match="differ from the variables"):
        write_anndata(tmp_path / "s.h5ad", iter([nuclei.select(slice(10, 20)), odd]), CLASS_NAMES, CLASS_COLORS, 0.25)
    assert not (tmp_path / "s.h5ad").exists()


def test_anndata_without_its_extra_names_the_extra(tmp_path: Path, monkeypatch):
    for name in ("anndata", "anndata.io", "anndata.experimental"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(PipelineInputError, match=r"promptnucseg\[anndata\]"):
        write_anndata(tmp_path / "s.h5ad", _never_read(), CLASS_NAMES, CLASS_COLORS, 0.25)


# ---------------------------------------------------------------- streaming


def test_many_small_batches_give_the_same_files_as_one_batch(tmp_path: Path, nuclei: SlideNuclei):
    a, b = tmp_path / "stream", tmp_path / "whole"
    for folder, make in ((a, lambda: batches_of(nuclei, BATCH)), (b, lambda: iter([nuclei]))):
        write_geojson(folder / "s.geojson.gz", make(), CLASS_NAMES, CLASS_COLORS)
        write_table(folder / "s.csv", make(), engine="csv", class_names=CLASS_NAMES)
        write_table(folder / "s.parquet", make(), class_names=CLASS_NAMES, row_group_rows=1024)
        write_zarr(folder / "s.zarr", make(), META, chunk_rows=4096)
        write_label_tiff(folder / "s_labels.tif", SLIDE_HW, make())
    for name in ("s.geojson.gz", "s.csv", "s_labels.tif", "s.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    za, zb = zarr.open_group(str(a / "s.zarr"), mode="r"), zarr.open_group(str(b / "s.zarr"), mode="r")
    assert dict(za.attrs) == dict(zb.attrs)
    for name in ("id", "point", "centroid", "class", "class_score", "mask_score", "polygon_offsets", "polygon_coords", *(f"measurements/{k}" for k in MEASUREMENTS)):
        assert np.array_equal(za[name][:], zb[name][:], equal_nan=za[name].dtype.kind == "f"), name
    assert pq.ParquetFile(a / "s.parquet").metadata.num_row_groups == 10
    # chunk-aligned buffering: every chunk file of the streamed store written once, same set
    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(a / "s.zarr") == files(b / "s.zarr")


@pytest.mark.parametrize("writer", ["geojson", "zarr", "table", "tiff", "anndata"])
def test_writers_hold_one_batch_at_a_time(tmp_path: Path, nuclei: SlideNuclei, writer: str):
    """Constant memory in the number of nuclei: by the time batch k is requested, batches
    before k-1 have been released by the writer."""
    alive: list[weakref.ref] = []

    def tracked() -> Iterator[SlideNuclei]:
        for k, batch in enumerate(batches_of(nuclei.select(slice(0, 2000)), 100)):
            gc.collect()
            assert all(ref() is None for ref in alive[:-1]), f"{writer} still holds old batches at batch {k}"
            alive.append(weakref.ref(batch))
            yield batch
            del batch

    run = {
        "geojson": lambda: write_geojson(tmp_path / "g.geojson", tracked(), CLASS_NAMES, CLASS_COLORS),
        "zarr": lambda: write_zarr(tmp_path / "z.zarr", tracked(), META, chunk_rows=256, label_raster=(SLIDE_HW, 8.0)),
        "table": lambda: write_table(tmp_path / "t.parquet", tracked(), row_group_rows=300),
        "tiff": lambda: write_label_tiff(tmp_path / "l.tif", SLIDE_HW, tracked()),
        "anndata": lambda: write_anndata(tmp_path / "a.h5ad", tracked(), CLASS_NAMES, CLASS_COLORS, 0.25, chunk_rows=256),
    }[writer]
    run()
    assert len(alive) == 20


# ---------------------------------------------------------------- errors and atomicity


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _never_read() -> Iterator[SlideNuclei]:
    raise AssertionError("the writer read batches before checking its folder")
    yield  # pragma: no cover


@pytest.mark.parametrize("writer", ["geojson", "zarr", "table", "csv", "tiff", "anndata"])
def test_unwritable_folder_is_refused_before_any_work(tmp_path: Path, writer: str):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "sub"
    run = {
        "geojson": lambda: write_geojson(out / "s.geojson", _never_read(), CLASS_NAMES, CLASS_COLORS),
        "zarr": lambda: write_zarr(out / "s.zarr", _never_read(), META),
        "table": lambda: write_table(out / "s.parquet", _never_read()),
        "csv": lambda: write_table(out / "s.parquet", _never_read(), engine="csv"),
        "tiff": lambda: write_label_tiff(out / "s_labels.tif", (10, 10), _never_read()),
        "anndata": lambda: write_anndata(out / "s.h5ad", _never_read(), CLASS_NAMES, CLASS_COLORS, 0.25),
    }[writer]
    with pytest.raises(PipelineInputError) as err:
        run()
    assert str(out) in str(err.value) and "Fix:" in str(err.value) and "output folder" in str(err.value)


@pytest.mark.parametrize("writer", ["geojson", "zarr", "table", "csv", "tiff", "anndata"])
def test_a_failure_mid_stream_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path, nuclei: SlideNuclei, writer: str):
    names = {"geojson": "s.geojson", "zarr": "s.zarr", "table": "s.parquet", "csv": "s.csv", "tiff": "s_labels.tif", "anndata": "s.h5ad"}
    target = tmp_path / names[writer]

    def run(batches):
        return {
            "geojson": lambda: write_geojson(target, batches, CLASS_NAMES, CLASS_COLORS),
            "zarr": lambda: write_zarr(target, batches, META, chunk_rows=128),
            "table": lambda: write_table(target, batches),
            "csv": lambda: write_table(target, batches, engine="csv"),
            "tiff": lambda: write_label_tiff(target, SLIDE_HW, batches),
            "anndata": lambda: write_anndata(target, batches, CLASS_NAMES, CLASS_COLORS, 0.25, chunk_rows=128),
        }[writer]()

    def dies() -> Iterator[SlideNuclei]:
        yield from batches_of(nuclei.select(slice(0, 500)), 100)
        raise RuntimeError("killed mid-run")

    with pytest.raises(RuntimeError, match="killed"):
        run(dies())
    assert list(tmp_path.iterdir()) == []
    # debris of a writer that was killed outright (its process gone) is swept by the next write
    dead = _exited_pid()
    (tmp_path / f".{target.name}.partial-{dead}").mkdir()
    (tmp_path / f".{target.name}.old-{dead}").write_text("half")
    run(batches_of(nuclei.select(slice(0, 100)), 50))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="killed"):
        run(dies())
    assert sorted(p.name for p in tmp_path.iterdir()) == before == [names[writer]]
