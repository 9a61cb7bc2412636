"""`segment --regions`: QuPath's annotation export read and checked, refusals before the model loads,
and (slow) a real run on the sample slide keeping exactly the nuclei whose prompt lies in a polygon with a hole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.regions import check_regions, read_regions
from conftest import SHARED_DATA, need

CMU = SHARED_DATA / "slides" / "cmu_small_region.svs"
CMU_SIZE = (2220, 2967)  # level-0 px of the sample slide
# QuPath 0.5's export of one annotation (PathObjectTypeAdapter: id, geometry, properties.objectType/name/classification)
OUTER = [[700, 1000], [900, 1000], [900, 1200], [700, 1200], [700, 1000]]
HOLE = [[760, 1060], [840, 1060], [840, 1140], [760, 1140], [760, 1060]]


def _annotation(
    coords: list,
    name: str = "Tumour A",
    cls: dict | None = None,
    kind: str = "Polygon",
    object_type: str = "annotation",
) -> dict:
    props: dict = {"objectType": object_type, "name": name}
    if cls is not None:
        props["classification"] = cls
    return {
        "type": "Feature",
        "id": "1b7c6f0e-8a55-4d0e-9a0c-2a3d2b1b0c01",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": props,
    }


def _write(tmp_path: Path, obj: object, name: str = "regions.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_qupath_export_is_read_with_holes_classes_and_multipolygons(tmp_path):
    features = [
        _annotation([OUTER, HOLE], cls={"name": "Tumor", "color": [200, 0, 0]}),
        _annotation(
            [[[[100, 100], [200, 100], [200, 200], [100, 100]]], [[[300, 300], [400, 300], [400, 400], [300, 300]]]],
            name="",
            cls={"names": ["Stroma", "Positive"]},
            kind="MultiPolygon",
        ),
        _annotation([10, 10], kind="Point"),  # a point annotation: no area, skipped
    ]
    regions = read_regions(_write(tmp_path, {"type": "FeatureCollection", "features": features}))
    assert [r.label for r in regions.regions] == ["Tumour A", "Stroma: Positive"]
    assert [r.class_name for r in regions.regions] == ["Tumor", "Stroma: Positive"]
    assert regions.skipped == 1
    assert regions.regions[0].geometry.area == 200 * 200 - 80 * 80  # the hole is no part of it
    inside = regions.inside(np.array([[710.0, 1010.0], [800.0, 1100.0], [150.0, 120.0], [350, 320], [700.0, 1100.0]]))
    assert inside.tolist() == [
        [True, False],
        [False, False],
        [False, True],
        [False, True],
        [True, False],
    ]  # hole out, edge in
    bare = read_regions(_write(tmp_path, features[:1], "bare.geojson"))  # QuPath 0.2's bare list of features
    assert bare.regions[0].geometry.equals(regions.regions[0].geometry)


def test_the_smallest_region_holding_a_nucleus_is_recorded_and_each_counts_its_own(tmp_path):
    big = _annotation([[[0, 0], [1000, 0], [1000, 1000], [0, 1000], [0, 0]]], name="tumour")
    spot = _annotation([[[100, 100], [200, 100], [200, 200], [100, 200], [100, 100]]], name="hot spot")
    regions = read_regions(_write(tmp_path, [big, spot]))
    xy = np.array([[150.0, 150.0], [500.0, 500.0], [1500.0, 10.0]])
    assert regions.assign(xy).tolist() == [1, 0, -1]
    assert regions.inside(xy).sum(0).tolist() == [2, 1]


@pytest.mark.parametrize(
    "content,says",
    [
        ("not json at all", "is not GeoJSON"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "holds no polygon regions"),
        (json.dumps([_annotation([[0, 0], [10, 10]], kind="LineString")]), "holds no polygon regions (1 point or line"),
        (json.dumps([_annotation([OUTER], object_type="detection")]), "not an annotation"),
        (json.dumps([_annotation([[[0, 0], [10, 0], [20, 0], [0, 0]]])]), "encloses no area"),
        (
            json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": "nope"}, "properties": {}}]),
            "not rings of [x, y] numbers",
        ),
        (json.dumps({"type": "Topology"}), "not GeoJSON features"),
    ],
)
def test_bad_region_files_are_refused_in_one_line_naming_the_file(tmp_path, content, says):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(PipelineInputError) as err:
        read_regions(path)
    msg = str(err.value)
    assert says in msg and str(path) in msg and "Fix:" in msg and "\n" not in msg


def test_regions_in_another_frame_or_outside_the_slide_are_refused_and_roi_clips(tmp_path):
    regions = read_regions(_write(tmp_path, [_annotation([OUTER, HOLE])]))
    x4 = read_regions(_write(tmp_path, [_annotation([[[x * 4, y * 4] for x, y in OUTER]])], "x4.geojson"))
    with pytest.raises(PipelineInputError, match=r"lie outside the slide .* would fit if divided by \d"):
        check_regions(x4, CMU_SIZE, None)
    half_out = read_regions(
        _write(tmp_path, [_annotation([[[2000, 10], [3000, 10], [3000, 200], [2000, 10]]])], "edge.geojson")
    )
    with pytest.raises(PipelineInputError, match="mostly outside the slide"):
        check_regions(half_out, CMU_SIZE, None)
    clipped = check_regions(
        regions, CMU_SIZE, (800, 1000, 400, 400)
    )  # --roi cuts the region: only its part inside counts
    assert clipped.regions[0].geometry.equals(
        regions.regions[0].geometry.intersection(shapely.box(800, 1000, 1200, 1400))
    )
    assert clipped.clipped == [0] and clipped.bounds() == (800, 1000, 100, 200)
    with pytest.raises(PipelineInputError, match="no region overlaps --roi"):
        check_regions(regions, CMU_SIZE, (0, 0, 300, 300))


def test_cli_refuses_a_bad_regions_file_before_the_model_loads(tmp_path):
    slide = need(CMU)
    bad = _write(tmp_path, [_annotation([[[x * 8, y * 8] for x, y in OUTER]])], "wrong_frame.geojson")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "promptnucseg",
        "segment",
        str(slide),
        "--out",
        str(out),
        "--regions",
        str(bad),
        "--device",
        "cpu",
        "--no-progress",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Fix:" in lines[0], run.stderr
    assert not any(p.is_file() for p in out.rglob("*"))  # nothing written for the slide


@pytest.mark.slow
def test_a_polygon_with_a_hole_keeps_exactly_the_nuclei_whose_prompt_is_inside(tmp_path, predictor):
    """The regions run against a --roi run over the regions' box (the same tile grid): its nuclei are
    exactly the --roi run's nuclei whose prompt lies in the polygon (edge included), hole excluded."""
    import pandas as pd

    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.wsi_pipeline.segment import segment_slide

    slide = need(CMU)
    regions_file = _write(
        tmp_path,
        {
            "type": "FeatureCollection",
            "features": [_annotation([OUTER, HOLE], cls={"name": "Tumor", "color": [200, 0, 0]})],
        },
    )
    base = dict(tile_size=448, overlap=64, progress=False, formats=("geojson", "zarr", "table"))
    box = SegmentSettings(roi=(700, 1000, 200, 200), **base)
    ref = segment_slide(slide, tmp_path / "box", predictor, box, log=lambda m: None)
    inside = SegmentSettings(regions=str(regions_file), **base)
    got = segment_slide(slide, tmp_path / "regions", predictor, inside, log=lambda m: None)

    a, b = pd.read_parquet(ref["outputs"]["table"]), pd.read_parquet(got["outputs"]["table"])
    polygon = shapely.Polygon(OUTER, [HOLE])
    held = shapely.intersects_xy(polygon, a["point_x"].to_numpy(), a["point_y"].to_numpy())
    assert 0 < held.sum() < len(a)  # the hole and the box's corners hold nuclei the regions run must drop
    assert sorted(b["id"]) == sorted(a["id"][held])
    assert set(b["region"]) == {"Tumour A"} and set(b["region_class"]) == {"Tumor"}
    summary = got["regions"]["regions"][0]
    assert summary["nuclei"] == len(b) == got["nuclei"] and summary["area_mm2"] == pytest.approx(
        (200**2 - 80**2) * got["mpp_used"] ** 2 / 1e6, rel=1e-3
    )
    assert summary["nuclei_per_mm2"] == pytest.approx(len(b) / summary["area_mm2"], rel=1e-3)
    features = json.loads(Path(got["outputs"]["geojson"]).read_text())["features"]
    assert {f["properties"]["metadata"]["region"] for f in features} == {"Tumour A"}
    assert Path(got["outputs"]["regions"]).read_text().splitlines()[1].startswith("0,Tumour A,Tumor,")

    # a redrawn annotation is another run: the finished folder refuses it, naming the regions
    moved = _write(tmp_path, [_annotation([[[x + 10, y] for x, y in OUTER], HOLE])], "moved.geojson")
    with pytest.raises(PipelineInputError, match="changed: .*regions"):
        segment_slide(
            slide, tmp_path / "regions", predictor, SegmentSettings(regions=str(moved), **base), log=lambda m: None
        )
    assert (
        segment_slide(slide, tmp_path / "regions", predictor, inside, log=lambda m: None)["config_hash"]
        == got["config_hash"]
    )


def test_every_output_records_each_nucleus_region(tmp_path):
    """Real records (from_tile_nuclei on synthetic tiles) through the part journal and every exporter."""
    import anndata
    import pandas as pd
    import zarr

    from promptnucseg.wsi_pipeline.exporters import write_anndata, write_geojson, write_table, write_zarr
    from promptnucseg.wsi_pipeline.nuclei import load_part, save_part
    from test_records import synthetic_slide_nuclei

    nuclei = synthetic_slide_nuclei(n_tiles=1, size=256, scale=1.0, seed=3)
    x0, y0, x1, y1 = shapely.union_all(nuclei.polygons).bounds
    xm = (x0 + x1) / 2
    left = [[x0 - 1, y0 - 1], [xm, y0 - 1], [xm, y1 + 1], [x0 - 1, y1 + 1], [x0 - 1, y0 - 1]]
    spot = [[x0 - 1, y0 - 1], [x0 + 40, y0 - 1], [x0 + 40, y0 + 40], [x0 - 1, y0 + 40], [x0 - 1, y0 - 1]]
    regions = read_regions(
        _write(tmp_path, [_annotation([left], "left", {"name": "Tumor"}), _annotation([spot], "spot")])
    )
    nuclei.regions = regions.assign(nuclei.points)
    kept = nuclei.select(nuclei.regions >= 0)
    assert 0 < len(kept) < len(nuclei) and {0, 1} <= set(kept.regions.tolist())
    back = load_part(save_part(tmp_path / "part.npz", kept))
    np.testing.assert_array_equal(back.regions, kept.regions)
    assert (load_part(save_part(tmp_path / "plain.npz", nuclei.select(nuclei.regions < 0))).regions == -1).all()

    names = (regions.labels(), regions.class_names())
    classes = [f"class {i}" for i in range(int(nuclei.classes.max()) + 1)]
    colors = [(255, 0, 0)] * len(classes)
    expect = [names[0][r] for r in kept.regions]
    table = pd.read_parquet(write_table(tmp_path / "t.parquet", [back], class_names=classes, regions=names))
    assert table["region"].tolist() == expect and table["region_class"].tolist() == [names[1][r] for r in kept.regions]
    csv = pd.read_csv(
        write_table(tmp_path / "t.csv", [back], engine="csv", class_names=classes, regions=names),
        keep_default_na=False,
    )
    assert csv["region"].tolist() == expect
    fc = json.loads(
        write_geojson(tmp_path / "n.geojson", [back], classes, colors, regions=regions.metadata()).read_text()
    )
    meta = [f["properties"]["metadata"] for f in fc["features"]]
    assert [m["region"] for m in meta] == expect and {m["region_id"] for m in meta} == {
        "1b7c6f0e-8a55-4d0e-9a0c-2a3d2b1b0c01"
    }
    adata = anndata.read_h5ad(write_anndata(tmp_path / "n.h5ad", [back], classes, colors, 0.25, {}, regions=names))
    assert adata.obs["region"].astype(str).tolist() == expect
    assert adata.obs["region_class"].isna().tolist() == [names[1][r] == "" for r in kept.regions]
    store = zarr.open_group(
        str(write_zarr(tmp_path / "n.zarr", [back], {"class_names": classes, "regions": {"regions": []}})), mode="r"
    )
    np.testing.assert_array_equal(store["region"][:], kept.regions)
