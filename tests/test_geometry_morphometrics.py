"""Mask outlines and morphometrics against shapes whose answers are known by hand.

Tolerances come from pixelisation: a digital shape's boundary is only known to within
half a pixel, so lengths get +-1 px, areas ~1% (Gauss circle error ~ r^(2/3) px^2 for the
radii used), angles ~1 degree for elongated shapes of 60 px.
"""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from skimage.color import rgb_from_hed
from skimage.measure import find_contours

from promptnucseg.wsi_pipeline.geometry import mask_to_polygon, masks_to_polygons, polygon_rows_cols, simplify_polygons, trace_outlines
from promptnucseg.wsi_pipeline.morphometrics import MEASUREMENTS, measure_mask, measure_nuclei, stain_od


def disk(r: float, pad: int = 3) -> np.ndarray:
    n = int(2 * r) + 2 * pad + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    return xx**2 + yy**2 <= r * r


def ellipse(a: float, b: float, degrees_ccw: float, pad: int = 3) -> np.ndarray:
    """Semi-axes a (major), b; major axis turned `degrees_ccw` counter-clockwise on screen."""
    n = int(2 * a) + 2 * pad + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    t = np.deg2rad(degrees_ccw)
    u = xx * np.cos(t) - yy * np.sin(t)  # y points down: screen-ccw rotation flips sin
    v = xx * np.sin(t) + yy * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def random_masks(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(tuple(rng.integers(1, 22, 2))) < rng.uniform(0.2, 0.9) for _ in range(n)]


# ---------------------------------------------------------------- outlines


def test_trace_outlines_matches_skimage_find_contours_on_noisy_masks():
    """Same vertices and area as skimage's marching squares (largest-|area| contour of the
    1-px-padded mask), including saddles, holes and several components."""
    masks = random_masks(250, seed=1) + [np.zeros((3, 3), bool), np.ones((1, 1), bool), np.zeros((0, 4), bool)]
    out = trace_outlines(masks)
    assert list(out.index) == [i for i, m in enumerate(masks) if m.any()]
    for k, i in enumerate(out.index):
        ring = out.coords[out.offsets[k] : out.offsets[k + 1]]
        contours = find_contours(np.pad(masks[i], 1).astype(np.uint8), 0.5)
        areas = [shapely.Polygon(c[:, ::-1]).area for c in contours]
        ref = contours[int(np.argmax(areas))][:-1, ::-1] - 1
        poly = shapely.Polygon(ring)
        assert poly.is_valid
        assert set(map(tuple, ring)) == set(map(tuple, ref)), i
        assert poly.area == pytest.approx(max(areas), abs=1e-9)


def test_outline_keeps_largest_component_and_fills_its_holes():
    m = np.zeros((20, 30), bool)
    m[2:14, 2:16] = True
    m[5:8, 6:9] = False  # a hole
    m[15:18, 22:25] = True  # a smaller blob
    out = trace_outlines([m])
    expected = np.zeros_like(m)
    expected[2:14, 2:16] = True
    assert np.array_equal(out.masks[0], expected)
    poly = mask_to_polygon(m, (0, 0), 1.0, 0.0)
    # the outline joins pixel-edge midpoints: each of the 4 corners is cut by a 1/8 px^2 triangle
    assert len(poly.interiors) == 0 and poly.area == pytest.approx(12 * 14 - 4 / 8, abs=1e-9)


def test_mask_to_polygon_coordinates_and_empty_masks():
    m = np.zeros((3, 4), bool)
    m[:, :] = True
    p = mask_to_polygon(m, offset_xy=(100.0, 200.0), scale=2.0, tolerance=0.0)
    assert p.bounds == pytest.approx((100.0, 200.0, 108.0, 206.0))  # pixel edges at level 0
    assert p.exterior.is_ccw and p.is_valid
    assert mask_to_polygon(np.zeros((5, 5), bool)) is None
    assert mask_to_polygon(np.zeros((0, 5), bool)) is None
    single = mask_to_polygon(np.ones((1, 1), bool), (10, 10), 1.0, 0.0)
    assert single.is_valid and single.area == pytest.approx(0.5)  # a diamond through the 4 edge midpoints
    tiny = mask_to_polygon(np.ones((1, 1), bool), (10, 10), 1.0, 0.5)
    assert tiny.is_valid and tiny.area > 0
    assert masks_to_polygons([np.zeros((2, 2), bool), m], np.array([[0, 0], [100, 200]]), 2.0, 0.0)[0] is None


def test_round_trip_mask_polygon_raster_is_lossless_without_simplification():
    for i, m in enumerate(random_masks(60, seed=2) + [disk(9), ellipse(14, 5, 33)]):
        clean = trace_outlines([m]).masks
        if not clean:
            continue
        offset, scale = (37.0, 11.0), 3.0
        poly = mask_to_polygon(m, offset, scale, tolerance=0.0)
        rr, cc = polygon_rows_cols(poly, m.shape, downsample=scale, origin_xy=offset)
        back = np.zeros_like(m)
        back[rr, cc] = True
        assert np.array_equal(back, clean[0]), i


def test_simplification_stays_within_tolerance_and_valid():
    masks = random_masks(200, seed=3) + [disk(12), ellipse(20, 6, 70)]
    exact = masks_to_polygons(masks, np.zeros((len(masks), 2)), 1.0, 0.0)
    for tol in (0.5, 1.0, 3.0):
        simple = masks_to_polygons(masks, np.zeros((len(masks), 2)), 1.0, tol)
        for p, q in zip(exact, simple):
            assert (p is None) == (q is None)
            if p is not None:
                assert q.is_valid and q.geom_type == "Polygon" and q.area > 0 and q.exterior.is_ccw
                assert p.hausdorff_distance(q) <= tol + 1e-9
    # an invalid input (bow-tie) is repaired, keeping its larger lobe
    bowtie = shapely.Polygon([(0, 0), (4, 4), (4, 0), (-6, 10), (-6, 0)])
    fixed = simplify_polygons(np.array([bowtie], dtype=object), 0.1)[0]
    assert not bowtie.is_valid and fixed.is_valid and fixed.geom_type == "Polygon"
    assert fixed.area == pytest.approx(max(g.area for g in shapely.make_valid(bowtie).geoms))


# ---------------------------------------------------------------- morphometrics


def test_disk_measurements():
    r, mpp = 20, 0.5
    m = measure_mask(disk(r), mpp)
    assert m["area_um2"] == pytest.approx(np.pi * r**2 * mpp**2, rel=0.01)
    assert m["perimeter_um"] == pytest.approx(2 * np.pi * r * mpp, rel=0.02)
    assert 0.97 <= m["circularity"] <= 1.0
    assert 0.98 <= m["solidity"] <= 1.0
    assert m["eccentricity"] < 0.1
    for k in ("feret_max_um", "feret_min_um", "major_axis_um", "minor_axis_um"):
        assert abs(m[k] / mpp - 2 * r) <= 1.0, k  # +-1 px: the outline is at pixel edges


def test_axis_aligned_rectangle_measurements():
    w, h = 40, 20
    mask = np.zeros((h + 6, w + 6), bool)
    mask[3 : 3 + h, 3 : 3 + w] = True
    m = measure_mask(mask, 1.0)
    assert m["area_um2"] == w * h
    assert m["feret_min_um"] == pytest.approx(h)  # the short side, exactly
    assert np.hypot(w, h) - 0.5 <= m["feret_max_um"] <= np.hypot(w, h)  # corners cut by half a pixel
    # equal second moments: a uniform bar of length L has variance L^2/12
    assert m["major_axis_um"] == pytest.approx(4 * w / np.sqrt(12))
    assert m["minor_axis_um"] == pytest.approx(4 * h / np.sqrt(12))
    assert m["eccentricity"] == pytest.approx(np.sqrt(1 - (h / w) ** 2))
    assert m["orientation_deg"] == pytest.approx(0.0, abs=1e-9)
    assert m["solidity"] == pytest.approx(1.0)
    assert m["circularity"] == pytest.approx(4 * np.pi * w * h / (2 * (w + h)) ** 2, abs=0.04)  # rounded corners


@pytest.mark.parametrize("angle", [30.0, -60.0, 90.0])
def test_ellipse_measurements(angle):
    a, b, mpp = 30.0, 15.0, 0.25
    m = measure_mask(ellipse(a, b, angle), mpp)
    assert m["eccentricity"] == pytest.approx(np.sqrt(1 - (b / a) ** 2), abs=0.01)
    assert m["area_um2"] == pytest.approx(np.pi * a * b * mpp**2, rel=0.01)
    ramanujan = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    assert m["perimeter_um"] == pytest.approx(ramanujan * mpp, rel=0.02)
    assert abs(m["major_axis_um"] / mpp - 2 * a) <= 1.0
    assert abs(m["minor_axis_um"] / mpp - 2 * b) <= 1.0
    assert abs(m["feret_max_um"] / mpp - 2 * a) <= 1.0
    assert abs(m["feret_min_um"] / mpp - 2 * b) <= 1.0
    circ = 4 * np.pi * (np.pi * a * b) / ramanujan**2
    assert m["circularity"] == pytest.approx(circ, abs=0.02)
    diff = (m["orientation_deg"] - angle + 90) % 180 - 90  # axes are modulo 180 degrees
    assert abs(diff) < 1.0
    assert -90 < m["orientation_deg"] <= 90


def test_batch_measurements_equal_one_by_one_and_scale_with_mpp():
    masks = [disk(6), ellipse(12, 5, 20), random_masks(1, seed=9)[0] | True]
    boxes, rings, offsets, x = [], [], [0], 0
    traced = trace_outlines(masks)
    for k, m in enumerate(traced.masks):
        h, w = m.shape
        boxes.append((x, 5, x + w, 5 + h))
        rings.append(traced.coords[traced.offsets[k] : traced.offsets[k + 1]] + (x, 5))
        offsets.append(offsets[-1] + len(rings[-1]))
        x += w + 2
    batch, centroids = measure_nuclei(traced.masks, np.array(boxes), np.concatenate(rings), np.array(offsets), 0.5)
    for k, m in enumerate(traced.masks):
        one = measure_mask(m, 0.5)
        for name in MEASUREMENTS:
            assert batch[name][k] == pytest.approx(one[name], rel=1e-5, abs=1e-6, nan_ok=True), name
        ys, xs = np.nonzero(m)
        assert centroids[k] == pytest.approx((xs.mean() + boxes[k][0], ys.mean() + boxes[k][1]))
    coarse = measure_mask(masks[1], 1.0)
    fine = measure_mask(masks[1], 0.5)
    assert fine["area_um2"] == pytest.approx(coarse["area_um2"] / 4)
    assert fine["feret_max_um"] == pytest.approx(coarse["feret_max_um"] / 2)
    assert fine["circularity"] == pytest.approx(coarse["circularity"])


def test_haematoxylin_and_eosin_optical_density_of_pure_stains():
    """A tile of pure haematoxylin beside pure eosin (Ruifrok-Johnston vectors, OD 0.8):
    each nucleus reads its own stain and none of the other. 8-bit rounding moves OD by at
    most log10(1 + 0.5/I) <= 0.01 per channel, < 0.02 after unmixing."""
    od = 0.8
    h_rgb = np.round(255 * 10 ** (-od * rgb_from_hed[0])).astype(np.uint8)
    e_rgb = np.round(255 * 10 ** (-od * rgb_from_hed[1])).astype(np.uint8)
    tile = np.full((40, 80, 3), 255, np.uint8)
    tile[:, :40] = h_rgb
    tile[:, 40:] = e_rgb
    m = disk(8, pad=1)
    h, w = m.shape
    boxes = np.array([(10, 10, 10 + w, 10 + h), (50, 10, 50 + w, 10 + h), (-5, -5, -5 + w, -5 + h), (100, 100, 100 + w, 100 + h)])
    traced = trace_outlines([m])
    ring = traced.coords
    coords = np.concatenate([ring + b[:2] for b in boxes])
    offsets = np.arange(5) * len(ring)
    values, _ = measure_nuclei([m] * 4, boxes, coords, offsets, 0.25, tile)
    assert values["hematoxylin_od_mean"][0] == pytest.approx(od, abs=0.02)
    assert values["eosin_od_mean"][0] == pytest.approx(0.0, abs=0.02)
    assert values["eosin_od_mean"][1] == pytest.approx(od, abs=0.02)
    assert values["hematoxylin_od_mean"][1] == pytest.approx(0.0, abs=0.02)
    assert values["hematoxylin_od_mean"][2] == pytest.approx(od, abs=0.02)  # only its pixels inside the tile count
    assert np.isnan(values["hematoxylin_od_mean"][3])  # no pixel on the tile
    assert stain_od(np.array([255, 255, 255], np.uint8)) == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="uint8"):
        stain_od(np.zeros((2, 3)))
