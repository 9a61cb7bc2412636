"""Slide records: stable ids, tile -> level-0 mapping, and exact, atomic part files."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from skimage import draw

from promptnucseg.models.interface import TileNuclei
from promptnucseg.wsi_pipeline import nuclei as records
from promptnucseg.wsi_pipeline.geometry import polygon_rows_cols
from promptnucseg.wsi_pipeline.morphometrics import MEASUREMENTS
from promptnucseg.wsi_pipeline.nuclei import SlideNuclei, load_part, nucleus_id, save_part
from promptnucseg.wsi_pipeline.stitch import from_tile_nuclei
from conftest import HE_CELLS, he_labels

HAEMATOXYLIN_RGB = (77, 70, 149)  # 255 * 10**(-0.8 * skimage's haematoxylin OD vector)
BACKGROUND_RGB = (235, 200, 220)


def synthetic_tile(size: int = 256, step: int = 24, seed: int = 0, empty_every: int = 0) -> tuple[TileNuclei, np.ndarray]:
    """Random ellipse nuclei on a grid (some touching the tile edge), painted haematoxylin
    blue on a pink tile; every `empty_every`-th nucleus gets an empty mask."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), BACKGROUND_RGB, np.uint8)
    pts, boxes, masks = [], [], []
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            y, x = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)
            rr, cc = draw.ellipse(y, x, rng.uniform(3, 8), rng.uniform(4, 11), shape=(size, size), rotation=rng.uniform(0, np.pi))
            if len(rr) == 0:
                continue
            y0, y1, x0, x1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
            m = np.zeros((y1 - y0, x1 - x0), bool)
            m[rr - y0, cc - x0] = True
            if empty_every and len(masks) % empty_every == empty_every - 1:
                m[:] = False
            rgb[rr, cc] = HAEMATOXYLIN_RGB
            pts.append((x, y))
            boxes.append((x0, y0, x1, y1))
            masks.append(m)
    n = len(pts)
    tile = TileNuclei(points=pts, classes=rng.integers(0, 3, n), class_scores=rng.uniform(0.3, 1, n), mask_scores=rng.uniform(0.3, 1, n), boxes=boxes, masks=masks)
    return tile, rgb


def synthetic_slide_nuclei(n_tiles: int = 2, size: int = 256, scale: float = 1.7, seed: int = 0, cols: int = 0, step: int = 24) -> SlideNuclei:
    """Nuclei of `n_tiles` synthetic tiles laid on a slide in rows of `cols` (default: one
    row), the first tile's corner at level-0 (1000, 500)."""
    parts = []
    cols = cols or n_tiles
    for k in range(n_tiles):
        tile, rgb = synthetic_tile(size, step=step, seed=seed + k)
        origin = (1000 + (k % cols) * size * scale, 500 + (k // cols) * size * scale)
        parts.append(from_tile_nuclei(tile, origin_level0=origin, scale=scale, slide_key="slide-A", rgb_tile=rgb, model_mpp=0.25, simplify_tolerance_px=0.5))
    return SlideNuclei.concatenate(parts)


def assert_same_nuclei(a: SlideNuclei, b: SlideNuclei) -> None:
    assert a.ids == b.ids
    for name in ("points", "centroids", "classes", "class_scores", "mask_scores"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert list(a.measurements) == list(b.measurements)
    for k in a.measurements:
        assert a.measurements[k].dtype == b.measurements[k].dtype
        assert np.array_equal(a.measurements[k], b.measurements[k], equal_nan=True), k
    assert len(a.polygons) == len(b.polygons)
    assert all(p.equals_exact(q, tolerance=0) for p, q in zip(a.polygons, b.polygons))


def test_nucleus_id_is_uuid5_and_deterministic():
    a = nucleus_id("slide-A", 1234.5, 99.25)
    assert a == nucleus_id("slide-A", 1234.5, 99.25)
    assert a == str(uuid.uuid5(records._ID_NAMESPACE, "slide-A:1234.500:99.250"))
    assert uuid.UUID(a).version == 5
    assert a != nucleus_id("slide-B", 1234.5, 99.25)
    assert a != nucleus_id("slide-A", 1234.5, 99.26)
    assert nucleus_id("s", -0.0, 0.0) == nucleus_id("s", 0.0, 0.0)


def test_from_tile_nuclei_maps_to_level0_and_rasterises_back_to_the_masks():
    tile, rgb = synthetic_tile(160, empty_every=7)
    origin, scale = (5000.0, 7000.0), 2.0
    out = from_tile_nuclei(tile, origin, scale, "slide-A", rgb, model_mpp=0.5, simplify_tolerance_px=0.0)
    nonempty = [i for i, m in enumerate(tile.masks) if m.any()]
    assert len(out) == len(nonempty) < len(tile)
    kept = tile.select(nonempty)
    expected_points = np.asarray(origin) + (kept.points.astype(np.float64) + 0.5) * scale
    assert np.array_equal(out.points, expected_points)
    assert out.ids == [nucleus_id("slide-A", x, y) for x, y in expected_points]
    assert np.array_equal(out.classes, kept.classes) and np.array_equal(out.mask_scores, kept.mask_scores)
    for k, (poly, m, box) in enumerate(zip(out.polygons, kept.masks, kept.boxes)):
        assert poly.is_valid and poly.exterior.is_ccw
        x0, y0, x1, y1 = box
        # outline bounds are the mask's pixel edges, exactly
        assert np.allclose(poly.bounds, [origin[0] + x0 * scale, origin[1] + y0 * scale, origin[0] + x1 * scale, origin[1] + y1 * scale])
        # unsimplified outline sampled at mask-pixel centres gives back the mask
        rr, cc = polygon_rows_cols(poly, m.shape, downsample=scale, origin_xy=(origin[0] + x0 * scale, origin[1] + y0 * scale))
        painted = np.zeros_like(m)
        painted[rr, cc] = True
        assert np.array_equal(painted, m), k
        assert poly.contains(shapely.Point(out.centroids[k]))
    assert list(out.measurements) == list(MEASUREMENTS)
    area_px = np.array([m.sum() for m in kept.masks])
    assert np.allclose(out.measurements["area_um2"], area_px * 0.25)
    assert np.all(out.measurements["hematoxylin_od_mean"] > 0.6)
    assert np.all(np.abs(out.measurements["eosin_od_mean"]) < 0.1)


def test_from_tile_nuclei_simplifies_within_tolerance_and_handles_empty_tiles():
    tile, rgb = synthetic_tile(160, seed=3)
    exact = from_tile_nuclei(tile, (0, 0), 1.5, "k", rgb, 0.25, simplify_tolerance_px=0.0)
    simple = from_tile_nuclei(tile, (0, 0), 1.5, "k", rgb, 0.25, simplify_tolerance_px=0.5)
    assert sum(len(p.exterior.coords) for p in simple.polygons) < 0.7 * sum(len(p.exterior.coords) for p in exact.polygons)
    for p, q in zip(exact.polygons, simple.polygons):
        assert q.is_valid and p.hausdorff_distance(q) <= 0.5 * 1.5 + 1e-9
    # measurements come from the masks, not from the exported outline
    for k in MEASUREMENTS:
        assert np.array_equal(exact.measurements[k], simple.measurements[k], equal_nan=True)
    assert len(from_tile_nuclei(TileNuclei(), (0, 0), 1.0, "k", rgb, 0.25)) == 0
    blank = TileNuclei(points=[(3, 3)], classes=[0], class_scores=[1], mask_scores=[1], boxes=[(0, 0, 4, 4)], masks=[np.zeros((4, 4), bool)])
    assert len(from_tile_nuclei(blank, (0, 0), 1.0, "k", rgb, 0.25)) == 0


def test_part_round_trip_is_exact(tmp_path: Path):
    nuclei = synthetic_slide_nuclei(2, 160)
    nuclei.measurements["area_um2"][3] = np.nan  # NaN survives too
    path = save_part(tmp_path / "000001.npz", nuclei)
    assert_same_nuclei(nuclei, load_part(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001.npz"]
    empty = save_part(tmp_path / "000002.npz", SlideNuclei())
    back = load_part(empty)
    assert len(back) == 0 and list(back.measurements) == list(MEASUREMENTS)
    # compact: well under the ~16 bytes x 2 x vertices of raw float64 coordinates + columns
    n_vertices = sum(len(p.exterior.coords) for p in nuclei.polygons)
    assert path.stat().st_size < 16 * n_vertices + 100 * len(nuclei)


def test_save_part_replaces_atomically_and_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    first = synthetic_slide_nuclei(1, 96, seed=1)
    path = save_part(tmp_path / "p.npz", first)
    second = synthetic_slide_nuclei(1, 96, seed=2)

    def disk_full(fh, **arrays):  # a write that dies half-way
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.np, "savez_compressed", disk_full)
    with pytest.raises(OSError):
        save_part(path, second)
    monkeypatch.undo()
    assert_same_nuclei(first, load_part(path))
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    save_part(path, second)
    assert_same_nuclei(second, load_part(path))


def test_load_part_refuses_other_formats(tmp_path: Path):
    path = tmp_path / "old.npz"
    np.savez(path, format=np.array([99], np.int32))
    with pytest.raises(ValueError, match="part format 99"):
        load_part(path)


def test_select_concatenate_and_column_checks():
    nuclei = synthetic_slide_nuclei(1, 128)
    a, b = nuclei.select(slice(0, 10)), nuclei.select(np.arange(10, len(nuclei)))
    assert_same_nuclei(SlideNuclei.concatenate([a, SlideNuclei(), b]), nuclei)
    mask = np.zeros(len(nuclei), bool)
    mask[[2, 5]] = True
    assert nuclei.select(mask).ids == [nuclei.ids[2], nuclei.ids[5]]
    with pytest.raises(ValueError, match="disagree"):
        SlideNuclei(ids=["a"], points=np.zeros((2, 2)))
    other = nuclei.select([0])
    other.measurements = {"area_um2": other.measurements["area_um2"]}
    with pytest.raises(ValueError, match="different measurements"):
        SlideNuclei.concatenate([nuclei.select([1]), other])


def test_real_nuclei_round_trip_to_the_same_label_map():
    """Ground-truth nuclei of a real labelled H&E image (the suite's own DSB-2018 fixture), as if
    the model had found them: outlines at level 0 (a slide with 2 level-0 px per model px),
    rasterised at the model's pixel size, paint back exactly the annotated label map, and the
    measurements look like real nuclei. One outline per nucleus: the 2 of 362 annotations that are
    a ring or two pieces cannot be one polygon, and are left out."""
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image
    from scipy import ndimage

    from promptnucseg.wsi_pipeline.exporters.label_tiff import paint_labels

    image = HE_CELLS  # the suite's own labelled real image (362 nuclei, median 371 px)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    truth = tifffile.imread(he_labels(image))
    boxes, masks, points, ids = [], [], [], []
    for i, sl in enumerate(ndimage.find_objects(truth), start=1):
        if sl is None:
            continue
        m = truth[sl] == i
        if ndimage.label(m)[1] != 1 or (ndimage.binary_fill_holes(m) & ~m).any():
            continue
        ys, xs = np.nonzero(m)
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        masks.append(m)
        points.append((xs.mean() + sl[1].start, ys.mean() + sl[0].start))
        ids.append(i)
    n = len(ids)
    tile = TileNuclei(points=points, classes=np.zeros(n), class_scores=np.ones(n), mask_scores=np.ones(n), boxes=boxes, masks=masks)
    out = from_tile_nuclei(tile, (0, 0), 2.0, "kumar", rgb, model_mpp=0.25, simplify_tolerance_px=0.0)
    assert len(out) == n > 300 and len(np.unique(truth)) - 1 - n <= 2
    expected = np.zeros(truth.shape, np.uint16)
    for k, i in enumerate(ids):
        expected[truth == i] = k + 1
    assert np.array_equal(paint_labels(truth.shape, [out], downsample=2.0), expected)
    m = out.measurements
    assert 20 < np.median(m["area_um2"]) < 100  # nuclei of ~5-11 um diameter
    assert np.all((m["circularity"] > 0) & (m["circularity"] <= 1) & (m["solidity"] <= 1))
    assert np.all(m["feret_min_um"] <= m["feret_max_um"])
    assert np.median(m["hematoxylin_od_mean"]) > 0.1
