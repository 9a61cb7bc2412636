"""Our outputs read by other people's readers, on a real slide region with the bundled model.

GDAL (through pyogrio) is an independent GeoJSON reader: what it reads is what QGIS,
geopandas and R's sf read. anndata reads the `.h5ad` as scanpy and squidpy would. One
small ROI of the sample slide (512x512 level-0 px, ~400 nuclei) is segmented once, with
`--gzip`; the plain `.geojson` is the same text uncompressed (the writer's only branch).
Skips, with the reason, without ../shared/data or the bundled model.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import zarr

from promptnucseg.cli import main
from promptnucseg.wsi_pipeline.exporters.geojson_export import SCORE_MEASUREMENTS
from promptnucseg.wsi_pipeline.morphometrics import MEASUREMENT_UNITS, MEASUREMENTS
from conftest import sample_slide_or_skip
ROI = "800,1000,512,512"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The slide folder of one `segment --formats geojson,zarr,table,anndata --gzip` run."""
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    slide = sample_slide_or_skip()
    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    out = tmp_path_factory.mktemp("interop")
    args = ["segment", str(slide), "--out", str(out), "--roi", ROI, "--device", "cpu", "--no-progress", "--gzip", "--formats", "geojson,zarr,table,anndata"]
    assert main(args) == 0
    folder = out / "cmu_small_region"
    with gzip.open(folder / "cmu_small_region.geojson.gz", "rb") as src:
        (folder / "cmu_small_region.geojson").write_bytes(src.read())
    return folder


@pytest.mark.parametrize("name", ["cmu_small_region.geojson", "cmu_small_region.geojson.gz"])
def test_gdal_reads_every_nucleus_with_a_valid_polygon_and_its_measurements(run: Path, name: str):
    pyogrio = pytest.importorskip("pyogrio", reason="pyogrio (GDAL) is in the test extra: pip install '.[test]'")
    path = str(run / name)
    if name.endswith(".gz"):
        path = f"/vsigzip/{path}"  # GDAL's gzip reader, as QGIS or geopandas would be told
    report = json.loads((run / "cmu_small_region_report.json").read_text())
    info = pyogrio.read_info(path)
    assert info["driver"] == "GeoJSON" and info["geometry_type"] == "Polygon"
    assert info["features"] == report["nuclei"] > 100
    meta, _, wkb, fields = pyogrio.raw.read(path, FLATTEN_NESTED_ATTRIBUTES="YES")
    columns = dict(zip(meta["fields"], fields))
    geoms = shapely.from_wkb(wkb)
    assert len(geoms) == report["nuclei"]
    assert shapely.is_valid(geoms).all() and (shapely.area(geoms) > 0).all()
    names = [*MEASUREMENTS.values(), *SCORE_MEASUREMENTS.values()]
    for display in names:
        column = columns[f"measurements_{display}"]
        assert column.dtype.kind == "f" and np.isfinite(column).mean() > 0.99, display
    assert set(columns["objectType"]) == {"detection"} and set(columns["classification_name"]) == {"nucleus"}
    # the same nuclei, in the same order, as the table: GDAL lost nothing and reordered nothing
    table = pq.read_table(run / "cmu_small_region_nuclei.parquet").to_pydict()
    assert list(columns["id"]) == table["id"]
    np.testing.assert_allclose(columns["measurements_Area µm^2"], table["area_um2"], rtol=1e-6)
    lo, hi = np.asarray([800, 1000]), np.asarray([800 + 512, 1000 + 512])
    bounds = shapely.bounds(geoms)
    assert (bounds[:, :2] >= lo - 1).all() and (bounds[:, 2:] <= hi + 1).all()  # level-0 pixels of the ROI


def test_anndata_file_is_one_row_per_nucleus_ready_for_spatial_analysis(run: Path):
    anndata = pytest.importorskip("anndata", reason="the anndata extra (pip install promptnucseg[anndata]) is not installed")
    report = json.loads((run / "cmu_small_region_report.json").read_text())
    adata = anndata.read_h5ad(run / "cmu_small_region.h5ad")
    assert adata.n_obs == report["nuclei"] > 100 and list(adata.var_names) == list(MEASUREMENTS)
    assert dict(zip(adata.var_names, adata.var["unit"])) == MEASUREMENT_UNITS
    store = zarr.open_group(str(run / "cmu_small_region.zarr"), mode="r")
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in store["id"][:]]
    assert list(adata.obs_names) == ids
    np.testing.assert_array_equal(adata.obsm["spatial"], store["centroid"][:])
    np.testing.assert_array_equal(adata.obs["class"].cat.codes.to_numpy(), store["class"][:])
    np.testing.assert_array_equal(adata.obs["class_score"].to_numpy(), store["class_score"][:])
    for j, k in enumerate(MEASUREMENTS):
        np.testing.assert_array_equal(adata.X[:, j], store[f"measurements/{k}"][:])
    assert adata.uns["mpp"] == pytest.approx(report["mpp_used"])
    microns = adata.obsm["spatial"] * adata.uns["mpp"]
    assert microns[:, 0].min() >= 800 * adata.uns["mpp"] - 1
    assert adata.obs["class"].value_counts().to_dict() == report["class_counts"]
    assert json.loads(adata.uns["promptnucseg"])["config_hash"] == report["config_hash"]


def test_anndata_format_without_the_extra_fails_before_any_work(tmp_path: Path, capsys, monkeypatch):
    for name in ("anndata", "anndata.io", "anndata.experimental"):
        monkeypatch.setitem(sys.modules, name, None)
    image = tmp_path / "tile.png"
    image.write_bytes(b"not read: the flag check comes first")
    assert main(["segment", str(image), "--out", str(tmp_path / "out"), "--formats", "geojson,anndata"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "promptnucseg[anndata]"' in err and err.count("\n") == 1


def test_a_finished_run_asked_for_a_new_format_writes_it(run: Path, tmp_path: Path, capsys):
    """A complete run is skipped only if it wrote every output asked for now: adding anndata
    to --formats later must produce the .h5ad, not "already complete"."""
    import shutil

    out = tmp_path / "out"
    folder = out / "cmu_small_region"
    shutil.copytree(run, folder)
    report = json.loads((folder / "cmu_small_region_report.json").read_text())
    report["outputs"].pop("anndata")  # as if the first run had not been asked for it
    (folder / "cmu_small_region_report.json").write_text(json.dumps(report))
    (folder / "cmu_small_region.h5ad").unlink()
    base = ["segment", str(sample_slide_or_skip()), "--out", str(out), "--roi", ROI, "--device", "cpu", "--no-progress", "--gzip"]
    assert main([*base, "--formats", "geojson,zarr"]) == 0
    assert "already complete" in capsys.readouterr().err
    assert main([*base, "--formats", "geojson,anndata"]) == 0
    assert "already complete" not in capsys.readouterr().err and (folder / "cmu_small_region.h5ad").is_file()
