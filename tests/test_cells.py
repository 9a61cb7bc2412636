"""`segment --cell-expansion UM` (wsi_pipeline/cells.py).

Fast tests: the real nuclei of a CC0 fixture (tests/fixtures/he, crowded glands, its instance labels)
become real slide records on its real pixels, are journaled as parts the way a run journals them, and
go through the real finish (`segment.finalize`: cells, every exporter, the report). One journal holds
them as one part (a one-pass run), another as several parts in another order (a tiled run): the cells
must be the same. Slow test: the model on the sample slide, tiled and in one pass.

What is checked: cells never overlap (beyond where their nuclei do) and each holds its nucleus; no cell
reaches further than UM from its nucleus or off the tissue; the GeoJSON is QuPath's cell layout (QuPath's
`QuPathTypeAdapters.PathObjectTypeAdapter`: `objectType: "cell"`, `nucleusGeometry` beside `geometry`);
without the flag no output carries any cell field.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from conftest import HE_GLANDS, he_labels, sample_slide_or_skip

UM = 3.0  # µm; the fixture is at 0.25 µm/px: 12 px
FORMATS = ("geojson", "zarr", "table", "anndata")


def _zarr_cells(store: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, nucleus polygons and cell polygons (float64, as stored) of a run's zarr store."""
    import zarr

    root = zarr.open_group(str(store), mode="r")
    offsets, coords = root["polygon_offsets"][:], root["polygon_coords"][:]
    nuclei = np.array([shapely.Polygon(coords[a:b]) for a, b in zip(offsets[:-1], offsets[1:])], dtype=object)
    rings = (root["cell_ring_offsets"][:], root["cell_polygon_offsets"][:])
    cells = shapely.from_ragged_array(shapely.GeometryType.POLYGON, root["cell_polygon_coords"][:], rings)
    return [str(i) for i in root["id"][:]], nuclei, np.asarray(cells, dtype=object)


def _fixture_plan(settings: Any) -> Any:
    """The fixture image planned as a slide at 0.25 µm/px (the model's), so model px = image px."""
    from promptnucseg.models.interface import ModelFacts, Palette
    from promptnucseg.wsi_pipeline.plan import plan_slide
    from promptnucseg.wsi_pipeline.slides import open_slide

    facts = ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True)
    with open_slide(HE_GLANDS) as reader:
        return plan_slide(reader, settings, facts)


def _fixture_nuclei(plan: Any) -> Any:
    """The fixture's labelled nuclei as real slide records (outline, measurements, stains on its pixels)."""
    import tifffile
    from PIL import Image
    from scipy import ndimage

    from promptnucseg.models.interface import TileNuclei
    from promptnucseg.wsi_pipeline.stitch import from_tile_nuclei

    labels = tifffile.imread(he_labels(HE_GLANDS))
    rgb = np.asarray(Image.open(HE_GLANDS).convert("RGB"))
    masks, boxes, points = [], [], []
    for k, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        mask = labels[box] == k + 1
        ys, xs = np.nonzero(mask)
        j = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)  # the prompt: the mask's pixel nearest its centre
        masks.append(mask)
        boxes.append([box[1].start, box[0].start, box[1].stop, box[0].stop])
        points.append([box[1].start + xs[j], box[0].start + ys[j]])
    n = len(masks)
    tile = TileNuclei(points, np.zeros(n), np.ones(n), np.ones(n), boxes, masks)
    return from_tile_nuclei(tile, (0.0, 0.0), plan.scale, plan.slide_key, rgb, plan.model_mpp, 0.5, plan.stains)


def _finish(folder: Path, parts: list[Any], cell_um: float) -> dict[str, Any]:
    """Journal `parts` as a run's batches and finish the run (cells, exports, report) into `folder`."""
    from promptnucseg.wsi_pipeline.journal import Journal
    from promptnucseg.wsi_pipeline.nuclei import save_part
    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.models.interface import ModelFacts, Palette
    from promptnucseg.wsi_pipeline.segment import finalize, fingerprint

    settings = SegmentSettings(mpp=0.25, progress=False, formats=FORMATS, cell_expansion_um=cell_um)
    plan = _fixture_plan(settings)
    model = ModelFacts(0.25, Palette(("nucleus",), ((255, 0, 0),)), 256, 192, seamless_windows=True, description={"model": "fixture labels"})
    journal = Journal(folder)
    fp = fingerprint(plan, model, settings)
    journal.start(fp)
    for b, part in enumerate(parts):
        journal.record(b, save_part(journal.part_path(b), part), {"tiles": [b], "nuclei": len(part)})
    names = {"geojson": "geojson", "zarr": "zarr", "table": "parquet", "anndata": "h5ad"}
    paths = {k: folder / f"fixture.{ext}" for k, ext in names.items()}
    report = finalize(plan, journal, model, settings, paths, fp)
    report["fingerprint"] = fp
    (folder / "fixture_report.json").write_text(json.dumps(report, default=str))  # a finished folder
    return report


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Any]:
    """The fixture's nuclei finished with cells as one part and as three parts (bands, bottom first),
    and without cells."""
    from promptnucseg.wsi_pipeline.plan import SegmentSettings

    out = tmp_path_factory.mktemp("cells")
    nuclei = _fixture_nuclei(_fixture_plan(SegmentSettings(mpp=0.25)))
    bands = np.digitize(nuclei.points[:, 1], [170, 340])
    parts = [nuclei.select(bands == b) for b in (2, 0, 1)]
    return {
        "nuclei": nuclei,
        "one": _finish(out / "one", [nuclei], UM),
        "parts": _finish(out / "parts", parts, UM),
        "plain": _finish(out / "plain", [nuclei], 0.0),
    }


def test_the_flag_takes_0_to_50_um_and_refuses_the_rest_by_name():
    from promptnucseg.wsi_pipeline.cli_segment import add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, "segment")
    assert parser.parse_args(["s.svs", "--out", "o"]).cell_expansion == 0.0
    assert parser.parse_args(["s.svs", "--out", "o", "--cell-expansion", "5"]).cell_expansion == 5.0
    for bad in ("-1", "nan", "inf", "51", "five"):
        with pytest.raises(argparse.ArgumentError, match="--cell-expansion"):
            parser.parse_args(["s.svs", "--out", "o", "--cell-expansion", bad])


def test_cells_hold_their_nucleus_never_overlap_and_stay_within_reach(finished):
    one = finished["one"]
    ids, nuclei, cells = _zarr_cells(Path(one["outputs"]["zarr"]))
    assert len(cells) == len(nuclei) == one["nuclei"] > 200
    assert shapely.is_valid(cells).all() and (shapely.get_type_id(cells) == shapely.GeometryType.POLYGON).all()
    assert shapely.area(shapely.difference(nuclei, cells)).max() < 1e-6  # each holds its nucleus (overlay noise aside)
    reach = UM / one["mpp_used"]
    assert shapely.area(shapely.difference(cells, shapely.buffer(nuclei, reach))).max() < 1e-6  # never beyond UM
    left, right = shapely.STRtree(cells).query(cells, predicate="intersects")
    left, right = left[left < right], right[left < right]
    cell_overlap = shapely.area(shapely.intersection(cells[left], cells[right]))
    nucleus_overlap = shapely.area(shapely.intersection(nuclei[left], nuclei[right]))
    assert len(left) > 100 and (cell_overlap <= nucleus_overlap + 1e-6).all()  # cells meet, share only nucleus overlap
    free = shapely.area(shapely.buffer(nuclei, reach, quad_segs=8))
    assert (shapely.area(cells) < 0.98 * free).mean() > 0.5  # crowded glands: the neighbours limit most cells


def test_a_run_in_several_parts_gives_the_same_cells_as_one_part(finished):
    """What tiling changes for the cells (the nuclei come in other parts, in another order) changes nothing."""
    a = json.loads(Path(finished["one"]["outputs"]["geojson"]).read_text())["features"]
    b = json.loads(Path(finished["parts"]["outputs"]["geojson"]).read_text())["features"]
    assert len(a) > 200 and [f["id"] for f in a] != [f["id"] for f in b]
    assert sorted(a, key=lambda f: f["id"]) == sorted(b, key=lambda f: f["id"])


def test_the_geojson_is_qupaths_cell_layout_and_every_output_has_the_cell_columns(finished):
    import anndata
    import pandas as pd
    import zarr

    one = finished["one"]
    features = json.loads(Path(one["outputs"]["geojson"]).read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"cell"}
    f = features[0]
    assert f["geometry"]["type"] == "Polygon" and f["nucleusGeometry"]["type"] == "Polygon"
    assert "nucleusGeometry" not in f["properties"]
    names = set().union(*(g["properties"]["measurements"] for g in features))
    wanted = {"Nucleus: Area µm^2", "Cell: Area µm^2", "Cytoplasm: Hematoxylin OD mean", "Nucleus/Cell area ratio"}
    assert wanted <= names
    assert not any(n.startswith("Area") for n in names)
    cell, nucleus = shapely.geometry.shape(f["geometry"]), shapely.geometry.shape(f["nucleusGeometry"])
    assert cell.area > nucleus.area and cell.buffer(0.01).covers(nucleus)

    table = pd.read_parquet(one["outputs"]["table"])
    assert [c for c in table.columns if c.startswith(("cell_", "cytoplasm_", "nucleus_cell"))] == [
        "cell_area_um2", "cell_perimeter_um", "cell_circularity", "cell_solidity",
        "cell_feret_max_um", "cell_feret_min_um",
        "cell_hematoxylin_od_mean", "cell_eosin_od_mean", "cytoplasm_area_um2", "cytoplasm_hematoxylin_od_mean",
        "cytoplasm_eosin_od_mean", "nucleus_cell_area_ratio",
    ]
    assert table["cell_area_um2"].gt(table["area_um2"] * 0.9).all()
    assert table["nucleus_cell_area_ratio"].between(0, 1).all() and table["cell_circularity"].between(0, 1).all()
    # stains of the ring are read from the image: haematoxylin is in the nuclei, less around them
    assert table["cytoplasm_hematoxylin_od_mean"].notna().mean() > 0.95
    assert (table["hematoxylin_od_mean"] > table["cytoplasm_hematoxylin_od_mean"]).mean() > 0.8
    root = zarr.open_group(one["outputs"]["zarr"], mode="r")
    assert "cell_area_um2" in root["measurements"] and root.attrs["cell_expansion_um"] == UM
    assert root.attrs["measurements"]["cytoplasm_eosin_od_mean"] == "Cytoplasm: Eosin OD mean"
    h5 = anndata.read_h5ad(one["outputs"]["anndata"])
    assert h5.var.loc["cell_area_um2", "name"] == "Cell: Area µm^2" and h5.var.loc["cell_area_um2", "unit"] == "µm^2"
    np.testing.assert_array_equal(h5[:, "cell_area_um2"].X.ravel(), table["cell_area_um2"].to_numpy())
    assert one["cell_expansion_um"] == UM and one["cells"]["cells"] == one["nuclei"]
    assert one["cells"]["cells_per_second"] > 0
    assert one["settings"]["cell_expansion_um"] == UM and one["fingerprint"]["cell_expansion_um"] == UM


def test_load_results_gives_each_nucleus_its_polygon_and_its_cell(finished):
    import promptnucseg

    one, plain = finished["one"], finished["plain"]
    ids, nuclei, cells = _zarr_cells(Path(one["outputs"]["zarr"]))
    frame = promptnucseg.load_results(Path(one["outputs"]["zarr"]).parent)
    assert frame["id"].tolist() == ids
    assert all(a.equals_exact(b, 0) for a, b in zip(frame["polygon"], nuclei))
    assert all(a.equals_exact(b, 0) for a, b in zip(frame["cell_polygon"], cells))
    assert "cell_polygon" not in promptnucseg.load_results(Path(plain["outputs"]["zarr"]).parent).columns


def test_without_the_flag_no_output_has_a_cell_field_and_the_nuclei_are_the_same(finished):
    import pandas as pd
    import zarr

    plain, one = finished["plain"], finished["one"]
    features = json.loads(Path(plain["outputs"]["geojson"]).read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert not any("nucleusGeometry" in f for f in features)
    names = set().union(*(f["properties"]["measurements"] for f in features))
    assert "Area µm^2" in names and not any(n.startswith(("Cell", "Cytoplasm", "Nucleus")) for n in names)
    table = pd.read_parquet(plain["outputs"]["table"])
    assert not any(c.startswith(("cell_", "cytoplasm_", "nucleus_cell")) for c in table.columns)
    root = zarr.open_group(plain["outputs"]["zarr"], mode="r")
    assert not any(k.startswith("cell") for k in root.array_keys()) and "cell_area_um2" not in root["measurements"]
    assert "cell_expansion_um" not in root.attrs and "cell_expansion_um" not in root.attrs["settings"]
    assert "cell_expansion_um" not in plain["settings"] and "cell_expansion_um" not in plain["fingerprint"]
    assert plain["cell_expansion_um"] == 0 and "cells" not in plain
    assert not (Path(plain["outputs"]["zarr"]).parent / ".work" / "cells").exists()
    cells_table = pd.read_parquet(one["outputs"]["table"])  # cells leave the nuclei as they were
    assert table["id"].tolist() == cells_table["id"].tolist()
    assert np.array_equal(table["area_um2"].to_numpy(), cells_table["area_um2"].to_numpy())


def test_the_block_grid_changes_nothing_and_the_tissue_mask_bounds_the_cells(finished, tmp_path):
    """The same nuclei on a 16x finer block grid: the same cells. A tissue mask over the image's left
    half: no cell grows off it (beyond its own nucleus). The journal's cell parts round-trip exactly."""
    from promptnucseg.wsi_pipeline.cells import SlideCells, grow_cells, load_cells, save_cells, slide_cells
    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.wsi_pipeline.tissue import TissueMask

    nuclei = finished["nuclei"]
    plan = _fixture_plan(SegmentSettings(mpp=0.25))
    plan.tissue = None
    coarse, fine = slide_cells(nuclei, plan, UM, None), slide_cells(nuclei, plan, UM, None, block_model_px=128)
    a, b = np.asarray(coarse.polygons, dtype=object), np.asarray(fine.polygons, dtype=object)
    assert shapely.area(shapely.symmetric_difference(a, b)).max() < 1e-6

    back = load_cells(save_cells(tmp_path / "000000.npz", fine))
    assert all(p.equals_exact(q, 0) for p, q in zip(back.polygons, fine.polygons))
    assert all(np.array_equal(back.measurements[k], v, equal_nan=True) for k, v in fine.measurements.items())
    assert len(load_cells(save_cells(tmp_path / "000001.npz", SlideCells([], {})))) == 0

    mask = np.zeros((512, 640), bool)
    mask[:, :320] = True
    plan.tissue = TissueMask(mask, 1.0, (640, 512))
    cut = np.asarray(slide_cells(nuclei, plan, UM, None).polygons, dtype=object)
    polys = np.asarray(nuclei.polygons, dtype=object)
    off = shapely.difference(shapely.intersection(cut, shapely.box(320, 0, 640, 512)), polys)
    assert shapely.area(off).max() < 1e-6 and (shapely.area(cut) < shapely.area(a) - 1).sum() > 50
    assert shapely.area(shapely.difference(polys, cut)).max() < 1e-6  # a nucleus off the tissue keeps itself whole
    assert grow_cells(list(polys[:3]), [], 10.0, 2.0) == []


@pytest.mark.slow
def test_tiled_and_one_pass_runs_of_the_model_give_the_same_cells(tmp_path, predictor):
    """The model's tiled run finds the one-pass run's nuclei up to float noise (prompts ~1e-3 px apart,
    so ids can differ; outlines ~1e-6 px), and cells follow their nuclei: measured here 190 of 190 cells,
    IoU min 0.9905, median 0.99994. (Bit-identical nuclei give bit-identical cells: the fast tests.)
    No tissue mask: windows of glass left unrun move prompts by ~1e-5 px (tests/test_window_decode.py)."""
    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.wsi_pipeline.segment import segment_slide

    slide = sample_slide_or_skip()
    um = 5.0
    base = dict(roi=(800, 1000, 384, 384), progress=False, formats=("geojson", "zarr"), cell_expansion_um=um,
                use_tissue_mask=False)
    one = segment_slide(slide, tmp_path / "one", predictor, SegmentSettings(**base), log=lambda m: None)
    tiled_settings = SegmentSettings(tile_size=448, overlap=128, **base)
    tiled = segment_slide(slide, tmp_path / "tiled", predictor, tiled_settings, log=lambda m: None)
    assert one["tiles"] == 1 and tiled["tiles"] > 1 and tiled["tiling"]["seamless"]
    ids_a, nuclei_a, cells_a = _zarr_cells(Path(one["outputs"]["zarr"]))
    ids_b, nuclei_b, cells_b = _zarr_cells(Path(tiled["outputs"]["zarr"]))
    points_a, points_b = _zarr_points(Path(one["outputs"]["zarr"])), _zarr_points(Path(tiled["outputs"]["zarr"]))
    assert len(ids_a) == len(ids_b) > 100
    gap = np.sqrt(((points_a[:, None] - points_b[None]) ** 2).sum(-1))
    match = gap.argmin(axis=1)  # the same nucleus: its prompt moved by float noise (~1e-3 px), so its id can differ
    assert gap[np.arange(len(match)), match].max() < 1.0 and len(set(match.tolist())) == len(match)
    cells_b = cells_b[match]
    iou = shapely.area(shapely.intersection(cells_a, cells_b)) / shapely.area(shapely.union(cells_a, cells_b))
    assert iou.min() > 0.98 and np.median(iou) > 0.999, (iou.min(), np.median(iou))


def _zarr_points(store: Path) -> np.ndarray:
    import zarr

    return zarr.open_group(str(store), mode="r")["point"][:]
