"""`promptnucseg report`: pictures and the HTML page, drawn from real slide folders.

Each slide folder is built the way `segment` leaves it, without the model: a real H&E
image as the slide, its ground-truth nuclei turned into records by the real code path
(`from_tile_nuclei`: outlines, centroids, measurements) and written by the real exporters.
The pictures are then checked pixel by pixel against those nuclei.
"""
from __future__ import annotations

import html.parser
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from promptnucseg.cli import main
from promptnucseg.models.interface import TileNuclei
from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.exporters import write_geojson, write_table, write_zarr
from promptnucseg.wsi_pipeline.journal import Journal
from promptnucseg.wsi_pipeline.nuclei import SlideNuclei, save_part
from promptnucseg.wsi_pipeline.stitch import from_tile_nuclei
from promptnucseg.wsi_pipeline.report import NucleusColumns, nucleus_density, render_run_report, render_slide_report
from conftest import HE_CELLS, SHARED_DATA, he_labels, need

DATA = SHARED_DATA
CONSEP_PATCHES = ("train_10_000", "train_10_005", "train_10_010", "train_10_015")  # 2 x 2 mosaic
CONSEP_NAMES = ["other", "inflammatory", "epithelial", "spindle-shaped"]
CONSEP_COLORS = [(255, 255, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
NUCLEUS_COLOR = (0, 255, 255)
MPP = 0.25


def nuclei_from_labels(labels: np.ndarray, rgb: np.ndarray, classes: dict[int, int], key: str) -> SlideNuclei:
    """Ground-truth instances as slide records, through the pipeline's own tile -> record path."""
    pts, boxes, masks, cls = [], [], [], []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        ys, xs = np.nonzero(m)
        pts.append((sl[1].start + xs.mean(), sl[0].start + ys.mean()))
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        masks.append(m)
        cls.append(classes.get(i, 0))
    n = len(pts)
    tile = TileNuclei(points=pts, classes=cls, class_scores=np.ones(n), mask_scores=np.ones(n), boxes=boxes, masks=masks)
    return from_tile_nuclei(tile, origin_level0=(0.0, 0.0), scale=1.0, slide_key=key, rgb_tile=rgb, model_mpp=MPP)


@pytest.fixture(scope="module")
def kumar() -> tuple[np.ndarray, np.ndarray, SlideNuclei]:
    """A real labelled H&E image of the suite's own (1024 rows x 640 columns; the slide stem stays "kumar")."""
    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))
    labels = tifffile.imread(he_labels(HE_CELLS)).astype(np.int64)
    return rgb, labels, nuclei_from_labels(labels, rgb, {}, "kumar")


@pytest.fixture(scope="module")
def consep() -> tuple[np.ndarray, np.ndarray, SlideNuclei]:
    """Four real 256 px CoNSeP patches side by side, with their typed instances."""
    root = need(DATA / "consep-patches" / "train")
    rgb = np.zeros((512, 512, 3), np.uint8)
    labels = np.zeros((512, 512), np.int64)
    classes: dict[int, int] = {}
    for k, stem in enumerate(CONSEP_PATCHES):
        r, c = divmod(k, 2)
        rgb[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = np.asarray(Image.open(root / "images" / f"{stem}.jpg").convert("RGB"))
        lab = tifffile.imread(root / "labels" / f"{stem}.tif").astype(np.int64)
        base = labels.max()
        labels[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = np.where(lab > 0, lab + base, 0)
        for i, t in json.loads((root / "classes" / f"{stem}.json").read_text()).items():
            classes[int(i) + int(base)] = int(t) - 1
    return rgb, labels, nuclei_from_labels(labels, rgb, classes, "consep")


def write_slide_folder(out: Path, stem: str, rgb: np.ndarray, nuclei: SlideNuclei, names: list[str], colors: list[tuple[int, int, int]],
                       roi: list[int] | None = None) -> Path:
    """`out/<stem>/` as `segment` leaves it; the slide PNG lies in `out/../slides/`."""
    slide = out.parent / "slides" / f"{stem}.png"
    slide.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(slide)
    folder = out / stem
    folder.mkdir(parents=True)
    batches = [nuclei.select(slice(a, a + 50)) for a in range(0, len(nuclei), 50)]  # several batches, as from tiles
    meta = {"slide": str(slide), "slide_mpp": MPP, "mpp_source": "override", "roi": roi or [0, 0, rgb.shape[1], rgb.shape[0]], "class_names": names, "class_colors": [list(c) for c in colors]}
    write_zarr(folder / f"{stem}.zarr", batches, meta, chunk_rows=64)  # several chunks: the renderer must stream
    write_geojson(folder / f"{stem}.geojson", batches, names, colors)
    table = write_table(folder / f"{stem}_nuclei.parquet", batches, class_names=names)
    counts = {n: int(np.sum(nuclei.classes == i)) for i, n in enumerate(names)}
    report = {
        "status": "complete", "slide": str(slide), "nuclei": len(nuclei), "class_counts": counts, "tiles": 4, "tiles_in_grid": 4,
        "tissue_fraction": 0.93, "wall_seconds": 3725.4, "tiles_per_second": 1.23, "nuclei_per_second": 456.7, "peak_rss_mb": 2345.6,
        "mpp_used": MPP, "mpp_source": "override", "model_mpp": 0.25,
        "outputs": {"geojson": str(folder / f"{stem}.geojson"), "zarr": str(folder / f"{stem}.zarr"), "table": str(table), "report": str(folder / f"{stem}_report.json")},
        "slide_facts": {"dimensions": [rgb.shape[1], rgb.shape[0]]}, "model": {"model": "promptnucseg-light", "weights": "/models/light_kumar.pt"},
        "settings": {"roi": None}, "versions": {"promptnucseg": "test"},
    }
    (folder / f"{stem}_report.json").write_text(json.dumps(report, indent=1))
    return folder


def overlay_part(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The thumbnail part of an overlay PNG (the legend strip lies below it)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    w, h = size
    assert img.shape[1] == w and img.shape[0] > h, f"overlay is {img.shape[1]}x{img.shape[0]}, expected {w} wide and taller than {h}"
    return img[:h]


def colour_mask(img: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return np.all(img == np.asarray(color, np.uint8), axis=2)


def boundary_band(labels: np.ndarray, members: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within `width` of the edge of the instances whose ids are in `members`."""
    inside = np.isin(labels, members) & (labels > 0)
    differs = (ndimage.grey_erosion(labels, size=3, mode="constant", cval=0) != labels) | (ndimage.grey_dilation(labels, size=3) != labels)
    edge = inside & differs
    return ndimage.binary_dilation(edge, np.ones((3, 3), bool), iterations=width)


def label_ids_by_class(labels: np.ndarray, nuclei: SlideNuclei) -> dict[int, np.ndarray]:
    """Instance ids of each class: the instance under each record's prompt point."""
    px = np.clip(np.floor(nuclei.points).astype(int), 0, [labels.shape[1] - 1, labels.shape[0] - 1])
    ids = labels[px[:, 1], px[:, 0]]
    return {int(c): ids[(nuclei.classes == c) & (ids > 0)] for c in np.unique(nuclei.classes)}


def test_outline_overlay_colours_each_nucleus_by_class_and_nothing_else(tmp_path, consep):
    rgb, labels, nuclei = consep
    for color in CONSEP_COLORS:
        assert not colour_mask(rgb, color).any(), "the test colours must not occur in the slide itself"
    folder = write_slide_folder(tmp_path / "run", "mosaic", rgb, nuclei, CONSEP_NAMES, CONSEP_COLORS)
    files = render_slide_report(folder)
    assert set(files) == {"overlay", "density", "areas", "class_counts", "pictures", "inset_1", "inset_2", "inset_3"}  # outlines visible: no zoom crop
    summary = json.loads(files["pictures"].read_text())
    assert summary["overlay"]["mode"] == "outlines" and summary["overlay"]["scale"] == 1.0
    img = overlay_part(files["overlay"], (512, 512))
    # away from the outlines the overlay is the slide, unchanged
    drawn = np.zeros(labels.shape, bool)
    for color in CONSEP_COLORS:
        drawn |= colour_mask(img, color)
    assert np.array_equal(img[~drawn], rgb[~drawn])
    by_class = label_ids_by_class(labels, nuclei)
    assert len(by_class) >= 3, "the mosaic should hold several classes"
    for c, ids in by_class.items():
        mine = colour_mask(img, CONSEP_COLORS[c])
        band = boundary_band(labels, ids)
        assert mine.sum() > 8 * len(ids), f"class {CONSEP_NAMES[c]}: too few outline pixels"
        assert not (mine & ~band).any(), f"class {CONSEP_NAMES[c]}: coloured pixels away from its nuclei"
        # each nucleus shows its colour along its own edge (a neighbour drawn later may cover a few)
        seen = [np.count_nonzero(mine & boundary_band(labels, np.array([i]))) >= 4 for i in ids]
        assert np.mean(seen) > 0.95, f"class {CONSEP_NAMES[c]}: {np.mean(seen):.0%} of nuclei outlined"
    # class counts: CSV and summary equal the records
    rows = files["class_counts"].read_text().splitlines()
    assert rows[0] == "class_index,class,count,percent,color"
    got = {r.split(",")[1]: int(r.split(",")[2]) for r in rows[1:]}
    assert got == {n: int(np.sum(nuclei.classes == i)) for i, n in enumerate(CONSEP_NAMES)}
    assert sum(got.values()) == len(nuclei)


def test_the_overview_boxes_the_roi_that_was_segmented(tmp_path, consep):
    from promptnucseg.wsi_pipeline.report.slide import ROI_COLOR

    rgb, _, nuclei = consep
    assert not colour_mask(rgb, ROI_COLOR).any()
    folder = write_slide_folder(tmp_path / "run", "mosaic", rgb, nuclei, CONSEP_NAMES, CONSEP_COLORS, roi=[100, 150, 200, 250])
    files = render_slide_report(folder)
    img = overlay_part(files["overlay"], (512, 512))
    blue = colour_mask(img, ROI_COLOR)
    assert blue[150:400, 100].all() and blue[150:400, 299].all() and blue[150, 100:300].all() and blue[399, 100:300].all()
    assert not blue[:140].any() and not blue[410:].any() and not blue[:, 310:].any()  # the box and nothing else
    assert any("--roi region x 100-300, y 150-400" in n for n in json.loads(files["pictures"].read_text())["notes"])


def test_dots_and_a_zoomed_crop_when_outlines_would_be_too_small(tmp_path, kumar):
    rgb, labels, nuclei = kumar
    assert not colour_mask(rgb, NUCLEUS_COLOR).any()
    folder = write_slide_folder(tmp_path / "run", "kumar", rgb, nuclei, ["nucleus"], [NUCLEUS_COLOR])
    files = render_slide_report(folder, max_side=64, zoom_side=128)  # nuclei ~22 px wide: 1.4 px here
    summary = json.loads(files["pictures"].read_text())
    assert summary["overlay"]["mode"] == "dots" and "zoom" in files
    scale = summary["overlay"]["scale"]
    H, W = rgb.shape[:2]
    assert scale == pytest.approx(max(H, W) / 64)
    img = overlay_part(files["overlay"], (round(W / scale), round(H / scale)))
    # a dot at every centroid (the zoom box's frame may cover a few), and dots only where nuclei are
    col, row = (nuclei.centroids[:, 0] // scale).astype(int), (nuclei.centroids[:, 1] // scale).astype(int)
    dots = colour_mask(img, NUCLEUS_COLOR)
    assert dots[row, col].mean() > 0.9
    expected = np.zeros_like(dots)
    expected[row, col] = True
    assert not (dots & ~ndimage.binary_dilation(expected, np.ones((3, 3), bool))).any()
    # the zoom crop: real pixels around the densest 100 um bin, outlines on the nuclei inside it
    zoom = summary["zoom"]
    x0, y0, w0, h0 = zoom["box_level0"]
    assert 0 <= x0 and 0 <= y0 and x0 + w0 <= W and y0 + h0 <= H
    bins = [np.arange(0, H, 400.0).tolist() + [H], np.arange(0, W, 400.0).tolist() + [W]]
    counts, _, _ = np.histogram2d(nuclei.centroids[:, 1], nuclei.centroids[:, 0], bins=bins)
    r, c = np.unravel_index(np.argmax(counts), counts.shape)
    assert c * 400 <= x0 + w0 / 2 <= (c + 1) * 400 and r * 400 <= y0 + h0 / 2 <= (r + 1) * 400
    zw, zh = zoom["size"]
    zimg = np.asarray(Image.open(files["zoom"]).convert("RGB"))
    assert zimg.shape[1] == zw and zimg.shape[0] > zh
    outline = colour_mask(zimg[:zh], NUCLEUS_COLOR)
    inside = (nuclei.centroids[:, 0] > x0) & (nuclei.centroids[:, 0] < x0 + w0) & (nuclei.centroids[:, 1] > y0) & (nuclei.centroids[:, 1] < y0 + h0)
    assert outline.sum() > 10 * inside.sum() > 0
    # outline pixels sit on nucleus edges: map the crop's pixels back to level 0
    s = zoom["scale"]
    yy, xx = np.nonzero(outline)
    lx = np.clip((x0 + (xx + 0.5) * s).astype(int), 0, W - 1)
    ly = np.clip((y0 + (yy + 0.5) * s).astype(int), 0, H - 1)
    band = boundary_band(labels, np.unique(labels[labels > 0]), width=3)
    assert band[ly, lx].mean() > 0.97


def inset_part(path: Path, size: list[int]) -> np.ndarray:
    """The crop of an inset PNG (its caption strip lies below it)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    w, h = size
    assert img.shape[1] == w and img.shape[0] > h
    return img[:h]


def check_insets(files: dict[str, Path], rgb: np.ndarray, labels: np.ndarray, nuclei: SlideNuclei, colors: dict[int, tuple[int, int, int]]) -> list[dict]:
    """Three non-overlapping 256 px crops of the slide at the model's 0.25 µm/px (= level 0 here), inside
    it, on its densest spots; each is the slide's pixels except where 2-px outlines sit on nucleus edges,
    in `colors` (class -> colour). Returns the insets' entries of the pictures summary."""
    from promptnucseg.wsi_pipeline.report.slide import INSET_SIDE_PX

    summary = json.loads(files["pictures"].read_text())
    insets = summary["insets"]
    assert len(insets) == 3 and [f"inset_{i}" in files for i in (1, 2, 3)] == [True] * 3
    H, W = rgb.shape[:2]
    boxes = []
    for inset in insets:
        x0, y0, w0, h0 = inset["box_level0"]
        assert (w0, h0) == (INSET_SIDE_PX, INSET_SIDE_PX) and inset["size"] == [256, 256] and inset["um_per_px"] == MPP
        assert 0 <= x0 and 0 <= y0 and x0 + w0 <= W and y0 + h0 <= H and x0 == int(x0) and y0 == int(y0)
        assert f"x {x0:,.0f}-{x0 + w0:,.0f}, y {y0:,.0f}-{y0 + h0:,.0f}" in inset["caption"]
        boxes.append((int(x0), int(y0)))
        cx, cy = nuclei.centroids[:, 0], nuclei.centroids[:, 1]
        assert inset["nuclei"] == int(np.sum((cx >= x0) & (cx < x0 + w0) & (cy >= y0) & (cy < y0 + h0)))
    for i, (xa, ya) in enumerate(boxes):  # no two overlap
        for xb, yb in boxes[i + 1:]:
            assert abs(xa - xb) >= 256 or abs(ya - yb) >= 256
    # the first is on the densest spot: no 256 px window of the slide holds many more nuclei
    hist, _, _ = np.histogram2d(nuclei.centroids[:, 1], nuclei.centroids[:, 0], bins=[np.arange(0, H + 32, 32), np.arange(0, W + 32, 32)])
    s = np.pad(hist.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best = (s[8:, 8:] - s[:-8, 8:] - s[8:, :-8] + s[:-8, :-8]).max()
    assert insets[0]["nuclei"] >= 0.8 * best and insets[0]["nuclei"] >= insets[2]["nuclei"]
    by_class = label_ids_by_class(labels, nuclei)
    for i, ((x0, y0), inset) in enumerate(zip(boxes, insets), start=1):
        img = inset_part(files[f"inset_{i}"], inset["size"])
        crop, lab = rgb[y0:y0 + 256, x0:x0 + 256], labels[y0:y0 + 256, x0:x0 + 256]
        drawn = np.zeros(lab.shape, bool)
        for c, color in colors.items():
            mine = colour_mask(img, color)
            drawn |= mine
            if c in by_class and mine.any():
                assert (mine & ~boundary_band(lab, by_class[c], width=3)).sum() <= 0.02 * mine.sum(), f"inset {i}: {color} off its nuclei's edges"
        assert drawn.sum() > 20 * inset["nuclei"] > 0  # 2-px outlines around every nucleus in it
        bar = np.zeros(lab.shape, bool)
        bar[-50:, :90] = True  # the scale bar, bottom left
        assert (img[~drawn & ~bar] == crop[~drawn & ~bar]).all(axis=1).mean() > 0.999  # elsewhere the slide's own pixels
        assert (img[bar] == 0).all(axis=1).sum() >= 30  # a black scale bar
    return insets


def test_zoomed_insets_show_native_pixels_with_visible_outlines(tmp_path, kumar):
    from promptnucseg.wsi_pipeline.report.slide import INSET_COLOR

    rgb, labels, nuclei = kumar
    assert not colour_mask(rgb, INSET_COLOR).any()
    folder = write_slide_folder(tmp_path / "run", "kumar", rgb, nuclei, ["nucleus"], [NUCLEUS_COLOR])
    files = render_slide_report(folder, max_side=512)
    insets = check_insets(files, rgb, labels, nuclei, {0: INSET_COLOR})  # untyped: bright green, not the class colour
    assert all(i["colors"] == "#00ff00" and i["outline_px"] == 2 for i in insets)
    assert not colour_mask(inset_part(files["inset_1"], [256, 256]), NUCLEUS_COLOR).any()


def test_typed_insets_draw_each_class_in_its_colour_inside_the_roi(tmp_path, consep):
    rgb, labels, nuclei = consep
    roi = [0, 0, 512, 300]
    keep = np.flatnonzero(nuclei.points[:, 1] < 300)  # a run with --roi keeps the nuclei whose prompt lies in it
    folder = write_slide_folder(tmp_path / "run", "mosaic", rgb, nuclei.select(keep), CONSEP_NAMES, CONSEP_COLORS, roi=roi)
    files = render_slide_report(folder)
    insets = json.loads(files["pictures"].read_text())["insets"]
    assert len(insets) >= 1 and all(i["colors"] == "class colours" for i in insets)
    for inset in insets:
        x0, y0, w0, h0 = inset["box_level0"]
        assert x0 >= 0 and y0 >= 0 and x0 + w0 <= 512 and y0 + h0 <= 300  # inside the ROI
    img = inset_part(files["inset_1"], insets[0]["size"])
    seen = [i for i, color in enumerate(CONSEP_COLORS) if colour_mask(img, color).sum() > 50]
    assert len(seen) >= 2, "a typed inset shows its classes in their colours"


def test_density_and_area_numbers_match_the_nuclei(tmp_path, kumar):
    rgb, _, nuclei = kumar
    folder = write_slide_folder(tmp_path / "run", "kumar", rgb, nuclei, ["nucleus"], [NUCLEUS_COLOR])
    files = render_slide_report(folder)
    summary = json.loads(files["pictures"].read_text())
    d = summary["density"]
    assert d["total"] == len(nuclei) and d["bin_um"] == 100.0
    # 100 um = 400 px bins over a 640 x 1024 px image: 2 x 3 bins, the last ones 240 and 224 px wide
    grid = nucleus_density(NucleusColumns(folder / "kumar.zarr"), (0, 0, 640, 1024), MPP)
    rows, cols = [0, 400, 800, 1024], [0, 400, 640]
    expected, _, _ = np.histogram2d(nuclei.centroids[:, 1], nuclei.centroids[:, 0], bins=[rows, cols])
    assert np.array_equal(grid.counts, expected.astype(np.int64))
    area = np.outer(np.diff(rows), np.diff(cols)) * (MPP / 1000) ** 2
    assert np.allclose(grid.per_mm2, expected / area)
    assert (grid.per_mm2 * grid.area_mm2).sum() == pytest.approx(len(nuclei))
    assert d["max_per_mm2"] == pytest.approx((expected / area).max())
    a = summary["areas"]
    assert a["median_um2"] == pytest.approx(float(np.median(nuclei.measurements["area_um2"])), rel=1e-5)
    assert a["shown"] + a["beyond_x_max"] == len(nuclei)
    for name in ("density", "areas"):
        with Image.open(files[name]) as im:
            assert im.size[0] >= 600 and im.size[1] >= 300  # a readable chart


def write_unfinished(out: Path, nuclei: SlideNuclei) -> None:
    journal = Journal(out / "half-done")
    journal.start({"slide": "half-done.svs"})
    for b in range(2):
        part = save_part(journal.part_path(b), nuclei.select(slice(b * 10, b * 10 + 10)))
        journal.record(b, part, {"tiles": 8, "nuclei": 10})


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_run_page_shows_every_slide_with_pictures_counts_and_failures(tmp_path, kumar, consep):
    out = tmp_path / "run"
    write_slide_folder(out, "kumar", kumar[0], kumar[2], ["nucleus"], [NUCLEUS_COLOR])
    mosaic = write_slide_folder(out, "mosaic", consep[0], consep[2], CONSEP_NAMES, CONSEP_COLORS)
    report = json.loads((mosaic / "mosaic_report.json").read_text())
    (mosaic / "mosaic_report.json").write_text(json.dumps({**report, "tissue_mm2": 0.05}))  # for the per-class densities
    gone = write_slide_folder(out, "moved", kumar[0], kumar[2], ["nucleus"], [NUCLEUS_COLOR])
    moved_report = json.loads((gone / "moved_report.json").read_text())  # a result to check: not a green "finished"
    (gone / "moved_report.json").write_text(json.dumps({**moved_report, "warnings": ["median nucleus area 1.2 um^2, outside"]}))
    (out.parent / "slides" / "moved.png").unlink()  # slide file gone: outlines on white, said so
    (out / "broken").mkdir()
    (out / "broken" / "broken_report.json").write_text('{"status": "compl')  # cut short
    (out / "crashed").mkdir()
    (out / "crashed" / "crashed_report.json").write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    write_unfinished(out, kumar[2])
    page = render_run_report(out, max_side=512)
    assert page == out / "report.html"
    text = page.read_text()
    for stem in ("kumar", "mosaic", "moved", "broken", "crashed", "half-done"):
        assert f'id="{stem}"' in text, stem
    assert text.count('class="state finished"') == 2 and text.count('class="state failed"') == 2 and text.count('class="state unfinished"') == 1
    assert text.count('<span class="state warned">finished with warnings</span>') == 1 and "Check this result: median nucleus area" in text
    assert "CUDA out of memory" in text and "broken_report.json" in text and "2 batches of tiles done" in text
    assert "not found" in text  # the moved slide
    for nuclei in (kumar[2], consep[2]):
        assert f"{len(nuclei):,}" in text
    for i, name in enumerate(CONSEP_NAMES):
        n = int(np.sum(consep[2].classes == i))
        assert re.search(rf"{name}</td><td class=n>{n:,}</td><td class=n>[0-9.]+%</td><td class=n>{n / 0.05:,.0f}</td>", text), name  # nuclei per mm² of tissue
    assert "1 h 02 min" in text and "2,346 MB" in text and "0.2500 <small>from override" in text and "promptnucseg-light (light_kumar.pt)" in text
    links = Links()
    links.feed(text)
    assert "script" not in links.tags and "link" not in links.tags  # self-contained: inline CSS, no JS
    local = [r for r in links.refs if not r.startswith("#")]
    assert not [r for r in local if "://" in r or r.startswith("/")]
    for ref in local:
        assert (out / ref).exists(), ref
    imgs = {Path(r).name for r in local if r.endswith(".png")}
    assert {"kumar_overlay.png", "kumar_density.png", "kumar_areas.png", "mosaic_overlay.png", "moved_overlay.png"} <= imgs
    # the moved slide's overlay is white where there are no outlines
    moved = overlay_part(gone / "moved_overlay.png", (kumar[0].shape[1] // 2, kumar[0].shape[0] // 2))  # 1024 rows drawn at 512
    assert (moved[~colour_mask(moved, NUCLEUS_COLOR)] == 255).all() and colour_mask(moved, NUCLEUS_COLOR).any()


def test_command_skips_up_to_date_pictures_and_refuses_an_empty_folder(tmp_path, kumar, capsys):
    out = tmp_path / "run"
    folder = write_slide_folder(out, "kumar", kumar[0], kumar[2], ["nucleus"], [NUCLEUS_COLOR])
    assert main(["report", str(out), "--max-side", "256"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "report.html") and "rendered" in captured.err
    overlay = folder / "kumar_overlay.png"
    stamp = overlay.stat().st_mtime_ns
    assert main(["report", str(out), "--max-side", "256"]) == 0
    assert "up to date" in capsys.readouterr().err and overlay.stat().st_mtime_ns == stamp
    assert main(["report", str(out), "--max-side", "300"]) == 0  # other size: drawn again
    h, w = kumar[0].shape[:2]  # the longer side (rows here) is drawn at --max-side
    assert overlay.stat().st_mtime_ns != stamp and abs(Image.open(overlay).size[0] - 300 * w / h) <= 1
    stamp = overlay.stat().st_mtime_ns
    report = folder / "kumar_report.json"
    report.write_text(report.read_text().replace('"wall_seconds": 3725.4', '"wall_seconds": 99.0'))  # a rerun of the slide
    assert main(["report", str(out), "--max-side", "300"]) == 0
    assert overlay.stat().st_mtime_ns != stamp and "99.0 s" in (out / "report.html").read_text()
    capsys.readouterr()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "no finished slide" in err and "Fix:" in err
    assert main(["report", str(out), "--max-side", "10"]) == 2
    assert "--max-side" in capsys.readouterr().err


def test_a_slide_folder_without_its_store_is_refused_clearly(tmp_path, kumar):
    out = tmp_path / "run"
    folder = write_slide_folder(out, "kumar", kumar[0], kumar[2], ["nucleus"], [NUCLEUS_COLOR])
    shutil.rmtree(folder / "kumar.zarr")
    with pytest.raises(PipelineInputError, match="kumar.zarr.*Fix: rerun the slide with --formats including zarr"):
        render_slide_report(folder)
    page = render_run_report(out).read_text()  # the page still lists it, with the reason
    assert "pictures could not be drawn" in page and "kumar.zarr" in page


def test_a_slide_without_nuclei_still_gets_its_pictures(tmp_path, kumar):
    rgb = kumar[0][:300, :400]
    folder = write_slide_folder(tmp_path / "run", "bare", rgb, SlideNuclei(), ["nucleus"], [NUCLEUS_COLOR])
    files = render_slide_report(folder)
    summary = json.loads(files["pictures"].read_text())
    assert summary["nuclei"] == 0 and summary["density"]["total"] == 0 and summary["density"]["grid"] == [1, 1]
    assert np.array_equal(overlay_part(files["overlay"], (400, 300)), rgb)  # the slide, untouched
    assert files["areas"].is_file() and files["class_counts"].read_text().splitlines()[1] == "0,nucleus,0,0.00,#00ffff"


def test_scale_bar_is_a_round_length_of_the_right_pixels():
    from promptnucseg.wsi_pipeline.report import draw_scale_bar

    image = Image.new("RGB", (1000, 400), (200, 100, 150))
    length = draw_scale_bar(image, 0.31)  # 1000 px x 0.31 um / 5 = 62 um: a 50 um bar
    assert length == 50
    bar = np.asarray(image)[400 - 12 - 3]  # a row through the black bar
    black = np.flatnonzero((bar == 0).all(axis=1))
    assert abs(len(black) - 50 / 0.31) <= 2


def test_every_version_of_the_bundled_model_names_its_weights_licence():
    from promptnucseg.wsi_pipeline.report import weights_licence

    assert "CC BY-NC-SA 4.0" in weights_licence("promptnucseg-light-kumar")
    assert "CC BY-NC-SA 4.0" in weights_licence("promptnucseg-light-kumar-v2")
    assert "CC BY" not in weights_licence("my-own-model")
