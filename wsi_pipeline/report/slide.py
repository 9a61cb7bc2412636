"""One slide's pictures, the morning-after check, drawn beside its `<stem>_report.json`.

Why these pictures: before opening a million nuclei in QuPath, a pathologist wants to see
at a glance that the outlines sit on nuclei (overlay, with a zoomed crop when whole-slide
outlines would be too small to see), where the cellular regions are (density in
nuclei/mm²) and that nuclear sizes are plausible (area histogram, µm²).

Files written beside `<stem>_report.json`: `<stem>_overlay.png` (thumbnail + legend strip
below it), `<stem>_overlay_zoom.png` (dots mode only), `<stem>_density.png`,
`<stem>_areas.png`, `<stem>_class_counts.csv`, `<stem>_inset_1.png` .. `_3.png` (zoomed insets at the
model's µm/px where nuclei are densest: at page scale an outline cannot be told from its
nucleus), and `<stem>_pictures.json`: the numbers
the pictures show plus what they were rendered from, so an up-to-date slide is skipped.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import PipelineInputError
from ..atomic import atomic_file
from ..geometry import signed_areas
from .drawing import DENSITY_BIN_UM, DensityGrid, _save_png, _with_legend, draw_areas, draw_density, draw_outlines, draw_scale_bar, legend_strip, nucleus_density, paint_dots
from ..outputs import INSETS, REPORT_SUFFIX, SlideOutputs, slide_mpp_of
from promptnucseg.models.interface import hex_color as _hex
from .run_reader import ClassInfo, NucleusColumns, _inputs, _region, load_json, pictures_up_to_date

INSET_SIDE_PX = 256  # each inset's side, at the model's µm/px (the pixels the model saw)
INSET_COLOR = (0, 255, 0)  # an untyped run's outlines in the insets: bright green reads on haematoxylin and on eosin
INSET_OUTLINE_PX = 2
OUTLINE_MIN_DIAMETER_PX = 3.0  # median nucleus narrower than this on the thumbnail: dots + zoom crop
ROI_COLOR = (0, 90, 255)  # the --roi box on the overview (the zoom crop is black and white, unreadable blocks red)
ZOOM_DIAMETER_PX = 16.0  # median nucleus diameter in the zoom crop
ZOOM_SIDE_PX = 1024


def _open_slide_pixels(report: dict[str, Any], folder: Path) -> tuple[Any, str | None]:
    """The slide reader, or None and why not (pictures then draw on white)."""
    from ..slides import open_slide

    named = report.get("slide")
    if not named:
        return None, "the report names no slide file"
    candidates = [Path(named)] if Path(named).is_absolute() else [Path(named), folder.parent / named]
    for path in candidates:
        if path.exists():
            try:
                return open_slide(path), None
            except Exception as err:  # an unreadable slide must not stop the report
                return None, f"slide {path} could not be read ({err})"
    return None, f"slide file {named} not found (outlines drawn on white)"


def _median_diameter_px(columns: NucleusColumns, areas_um2: np.ndarray | None, mpp: float | None) -> float | None:
    """Median equivalent-circle diameter of the nuclei in level-0 px: from the whole slide's
    area column when it and the mpp are known, else from the outlines of the first chunk."""
    if areas_um2 is not None and mpp and np.isfinite(areas_um2).any():
        return float(2 * np.sqrt(np.nanmedian(areas_um2) / np.pi) / mpp)
    for rows in columns.row_slices():
        _, offsets, coords = columns.rings(rows)
        areas = np.abs(signed_areas(coords, offsets))
        return float(2 * np.sqrt(np.median(areas) / np.pi)) if len(areas) else None
    return None


def _model_mpp(report: dict[str, Any], attrs: dict[str, Any]) -> float | None:
    """The µm/px the model ran at (the insets' resolution), from the report or the store."""
    for value in (report.get("model_mpp"), attrs.get("model_mpp")):
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            pass
    return None


def _write_class_counts(path: Path, counts: list[dict[str, Any]]) -> None:
    total = sum(c["count"] for c in counts) or 1
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["class_index", "class", "count", "percent", "color"])
            for c in counts:
                writer.writerow([c["index"], c["class"], c["count"], f"{100 * c['count'] / total:.2f}", c["color"]])


def _overlay_picture(columns: NucleusColumns, classes: np.ndarray, colors: list[tuple[int, int, int]], thumb: np.ndarray, scale: float, diameter: float | None, dots: bool) -> Image.Image:
    """The thumbnail with every nucleus as an outline, or as a dot when outlines would be
    smaller than `OUTLINE_MIN_DIAMETER_PX`, streamed a chunk of rows at a time."""
    if dots:
        pixels = thumb.copy()
        size = 1 if (diameter or 0) / scale < 2 else 2  # about the nucleus: larger dots would hide the tissue
        for rows in columns.row_slices():
            paint_dots(pixels, columns.centroids(rows), classes[rows], colors, scale, size)
        return Image.fromarray(pixels)
    image = Image.fromarray(thumb)
    width = 2 if diameter and diameter / scale >= 40 else 1
    for rows in columns.row_slices():
        _, offsets, coords = columns.rings(rows)
        draw_outlines(image, offsets, coords, classes[rows], colors, (0.0, 0.0), scale, width)
    return image


def _zoom_picture(columns: NucleusColumns, classes: np.ndarray, colors: list[tuple[int, int, int]], reader: Any, region: tuple[float, float, float, float], centre: tuple[float, float], diameter: float, side: int) -> tuple[Image.Image, dict[str, Any]]:
    """A `side`-px crop around `centre` (kept inside `region`) at a resolution where the
    median nucleus is `ZOOM_DIAMETER_PX` wide, with the outlines of the nuclei in it; only
    the rows whose centroids fall near the crop have their outlines read."""
    zoom_scale = max(0.25, diameter / ZOOM_DIAMETER_PX)
    rx, ry, rw, rh = region
    w0, h0 = min(side * zoom_scale, rw), min(side * zoom_scale, rh)
    x0 = float(np.clip(centre[0] - w0 / 2, rx, rx + rw - w0))
    y0 = float(np.clip(centre[1] - h0 / 2, ry, ry + rh - h0))
    out_w, out_h = max(1, int(w0 / zoom_scale)), max(1, int(h0 / zoom_scale))
    crop = reader.read_tolerant(x0, y0, out_w, out_h, zoom_scale) if reader is not None else np.full((out_h, out_w, 3), 255, np.uint8)
    image = Image.fromarray(crop)
    margin = 2 * diameter
    shown = 0
    for rows in columns.row_slices():
        c = columns.centroids(rows)
        keep = np.flatnonzero((c[:, 0] >= x0 - margin) & (c[:, 0] < x0 + w0 + margin) & (c[:, 1] >= y0 - margin) & (c[:, 1] < y0 + h0 + margin))
        if len(keep):
            _, offsets, coords = columns.rings(rows, keep)
            draw_outlines(image, offsets, coords, classes[rows][keep], colors, (x0, y0), zoom_scale)
            shown += len(keep)
    return image, {"box_level0": [x0, y0, w0, h0], "scale": zoom_scale, "size": [out_w, out_h], "nuclei_drawn": shown}


def dense_windows(grid: DensityGrid, side_px: float, count: int) -> list[tuple[float, float]]:
    """Level-0 centres of up to `count` windows `side_px` wide holding the most nuclei, densest
    first, no two overlapping (their centres at least `side_px` apart along x or y)."""
    rows, cols = grid.counts.shape
    k = max(1, min(int(round(side_px / grid.bin_px)), rows, cols))
    apart = max(k, math.ceil(side_px / grid.bin_px - 1e-9))
    s = np.pad(grid.counts.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]).astype(np.float64)
    centres: list[tuple[float, float]] = []
    while len(centres) < count and sums.size:
        r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
        if sums[r, c] <= 0:
            break
        centres.append((grid.origin[0] + (c + k / 2) * grid.bin_px, grid.origin[1] + (r + k / 2) * grid.bin_px))
        sums[max(0, r - apart + 1) : r + apart, max(0, c - apart + 1) : c + apart] = -1
    return centres


def _inset_picture(
    columns: NucleusColumns, classes: np.ndarray, colors: list[tuple[int, int, int]], reader: Any,
    region: tuple[float, float, float, float], centre: tuple[float, float], scale: float, side: int,
) -> tuple[Image.Image, dict[str, Any]]:
    """A `side`-px crop at `scale` level-0 px per px around `centre` (kept inside `region`), the
    outlines of its nuclei drawn `INSET_OUTLINE_PX` wide; only rows near the crop are read."""
    rx, ry, rw, rh = region
    w0, h0 = min(side * scale, rw), min(side * scale, rh)
    x0 = float(np.clip(centre[0] - w0 / 2, rx, rx + rw - w0))
    y0 = float(np.clip(centre[1] - h0 / 2, ry, ry + rh - h0))
    x0, y0 = float(math.floor(x0)), float(math.floor(y0))  # whole level-0 px: the caption's numbers are exact
    out_w, out_h = max(1, int(round(w0 / scale))), max(1, int(round(h0 / scale)))
    if reader is not None:
        crop = reader.read_tolerant(x0, y0, out_w, out_h, scale)
    else:
        crop = np.full((out_h, out_w, 3), 255, np.uint8)
    image = Image.fromarray(crop)
    margin = 64 * scale  # a nucleus whose centre lies outside may still reach in
    per_class = np.zeros(len(colors), np.int64)
    for rows in columns.row_slices():
        c = columns.centroids(rows)
        near = (c[:, 0] >= x0 - margin) & (c[:, 0] < x0 + w0 + margin) & (c[:, 1] >= y0 - margin) & (c[:, 1] < y0 + h0 + margin)
        keep = np.flatnonzero(near)
        if len(keep):
            _, offsets, coords = columns.rings(rows, keep)
            draw_outlines(image, offsets, coords, classes[rows][keep], colors, (x0, y0), scale, INSET_OUTLINE_PX)
            held = keep[(c[keep, 0] >= x0) & (c[keep, 0] < x0 + w0) & (c[keep, 1] >= y0) & (c[keep, 1] < y0 + h0)]
            per_class += np.bincount(classes[rows][held], minlength=len(colors))[: len(colors)]
    info = {
        "box_level0": [x0, y0, out_w * scale, out_h * scale], "scale": scale, "size": [out_w, out_h],
        "nuclei": int(per_class.sum()), "class_nuclei": per_class.tolist(), "outline_px": INSET_OUTLINE_PX,
    }
    return image, info


def _insets(
    columns: NucleusColumns, classes: np.ndarray, info: ClassInfo, reader: Any, region: tuple[float, float, float, float],
    mpp: float, model_mpp: float | None, paths: dict[str, Path],
) -> list[dict[str, Any]]:
    """Up to `INSETS` crops of `INSET_SIDE_PX` at the model's µm/px where nuclei are densest
    (inside the segmented region), each with its outlines, scale bar and level-0 coordinates:
    the page-scale overlay cannot show whether an outline sits on its nucleus."""
    scale = model_mpp / mpp if model_mpp and model_mpp > 0 else 1.0
    side0 = INSET_SIDE_PX * scale
    grid = nucleus_density(columns, region, mpp, bin_um=side0 * mpp / 2)  # half-inset bins: windows land on the crowd
    typed = len(info.names) > 1
    colors = list(info.colors) if typed else [INSET_COLOR] * len(info.colors)
    out = []
    for i, centre in enumerate(dense_windows(grid, side0, INSETS), start=1):
        image, inset = _inset_picture(columns, classes, colors, reader, region, centre, scale, INSET_SIDE_PX)
        x0, y0, w0, h0 = inset["box_level0"]
        um = scale * mpp
        draw_scale_bar(image, um)
        caption = (
            f"inset {i}: level-0 x {x0:,.0f}-{x0 + w0:,.0f}, y {y0:,.0f}-{y0 + h0:,.0f}; "
            f"{um:.2f} µm/px (the model's), {inset['nuclei']:,} nuclei"
        )
        entries = [(info.names[c], colors[c], n) for c, n in enumerate(inset["class_nuclei"]) if n] if typed else []
        _save_png(_with_legend(image, legend_strip(image.width, caption, entries)), paths[f"inset_{i}"])
        colours = "class colours" if typed else _hex(INSET_COLOR)
        out.append({**inset, "um_per_px": um, "caption": caption, "colors": colours, "file": paths[f"inset_{i}"].name})
    return out


def render_slide_report(slide_folder: Path, max_side: int = 2048, *, skip_up_to_date: bool = False, zoom_side: int = ZOOM_SIDE_PX) -> dict[str, Path]:
    """Render one finished slide's pictures beside its `<stem>_report.json`.

    Returns {"overlay", ["zoom",] "density", "areas", "class_counts", "pictures"} -> path
    ("density" needs the slide's mpp, "areas" the area measurement). `skip_up_to_date`
    returns the existing files untouched when they match the current report and store.
    """
    folder = Path(slide_folder)
    outputs = SlideOutputs.find(folder)
    if outputs is None:
        raise PipelineInputError(folder, f"has no *{REPORT_SUFFIX}", "pass the folder of a slide that `promptnucseg segment` finished")
    stem, report_path = outputs.stem, outputs.report
    paths = outputs.pictures()
    if skip_up_to_date and pictures_up_to_date(folder, max_side):
        done = json.loads(paths["pictures"].read_text())
        return {k: folder / v for k, v in done["files"].items()} | {"pictures": paths["pictures"]}
    report = load_json(report_path)
    if not str(report.get("status", "complete")).startswith("complete"):
        raise PipelineInputError(report_path, f"slide is not finished (status {report.get('status')!r})", "rerun the slide with `promptnucseg segment`")
    zarr_path = outputs.named(report, "zarr")
    if not zarr_path.exists():
        raise PipelineInputError(zarr_path, "nuclei store not found; the pictures are drawn from it", "rerun the slide with --formats including zarr")
    inputs = _inputs(report_path, zarr_path, max_side)
    columns = NucleusColumns(zarr_path)
    notes: list[str] = []

    # -- small whole columns: classes (counts, colours) and areas
    classes = columns.classes()
    n_classes = int(classes.max()) + 1 if len(classes) else 0
    info = ClassInfo.from_metadata(columns.attrs, report, n_classes)
    per_class = np.bincount(classes, minlength=len(info.names)) if len(classes) else np.zeros(len(info.names), np.int64)
    counts = [{"index": i, "class": info.names[i], "count": int(per_class[i]), "color": _hex(info.colors[i])} for i in range(len(info.names))]
    if report.get("nuclei") is not None and int(report["nuclei"]) != columns.n:
        notes.append(f"the report says {int(report['nuclei']):,} nuclei but the store holds {columns.n:,}")

    # -- the slide, its thumbnail and scale
    reader, why = _open_slide_pixels(report, folder)
    if why:
        notes.append(why)
    with reader if reader is not None else contextlib.nullcontext():  # closed once its pixels are read
        dims = tuple(int(v) for v in (reader.dimensions if reader is not None else (report.get("slide_facts") or {}).get("dimensions") or (0, 0)))
        if dims[0] <= 0 or dims[1] <= 0:
            raise PipelineInputError(report_path, "slide size unknown (no slide file and no slide_facts.dimensions)", "put the slide back at the path the report names")
        scale = max(1.0, max(dims) / max(1, int(max_side)))
        thumb_w, thumb_h = max(1, math.ceil(dims[0] / scale)), max(1, math.ceil(dims[1] / scale))
        thumb = reader.read_downsampled(scale) if reader is not None else np.full((thumb_h, thumb_w, 3), 255, np.uint8)
        region = _region(report, columns.attrs, dims)
        mpp = slide_mpp_of(report, columns.attrs)

        # -- outlines or dots
        areas = columns.areas_um2()
        diameter = _median_diameter_px(columns, areas, mpp)
        dots = diameter is not None and diameter / scale < OUTLINE_MIN_DIAMETER_PX
        overlay_info: dict[str, Any] = {"mode": "dots" if dots else "outlines", "scale": scale, "thumbnail_size": [thumb_w, thumb_h], "median_diameter_level0_px": diameter, "slide_pixels": reader is not None}
        density = nucleus_density(columns, region, mpp) if mpp else None
        if mpp is None:
            notes.append("no microns per pixel in the report: no density map")
        overlay_img = _overlay_picture(columns, classes, info.colors, thumb, scale, diameter, dots)

        files: dict[str, Path] = {}
        zoom_info: dict[str, Any] | None = None
        if columns.n and diameter is not None and (dots or scale > 1.0):  # the thumbnail is shrunk: show real outlines too
            if density is not None:
                centre = density.densest_window(zoom_side * max(0.25, diameter / ZOOM_DIAMETER_PX))
            else:  # no mpp, no density map: centre on the first chunk's nuclei
                c = columns.centroids(next(columns.row_slices()))
                centre = float(np.median(c[:, 0])), float(np.median(c[:, 1]))
            zoom_img, zoom_info = _zoom_picture(columns, classes, info.colors, reader, region, centre, diameter, zoom_side)
            x0, y0, w0, h0 = zoom_info["box_level0"]
            zs = zoom_info["scale"]
            title = f"{stem}: densest region, level-0 x {x0:,.0f}-{x0 + w0:,.0f}, y {y0:,.0f}-{y0 + h0:,.0f} ({zs:.2f} level-0 px per px{f', {zs * mpp:.2f} µm/px' if mpp else ''}); whole-slide counts"
            if mpp:
                draw_scale_bar(zoom_img, zs * mpp)
            zoom_counts = [(c["class"], info.colors[c["index"]], c["count"]) for c in counts if c["count"]]
            _save_png(_with_legend(zoom_img, legend_strip(zoom_img.width, title, zoom_counts)), paths["zoom"])
            files["zoom"] = paths["zoom"]
            d = ImageDraw.Draw(overlay_img)
            frame = max(3, max(thumb_w, thumb_h) // 400)  # visible among the dots at any size
            box = (x0 / scale - frame, y0 / scale - frame, (x0 + w0) / scale + frame, (y0 + h0) / scale + frame)
            d.rectangle(box, outline=(0, 0, 0), width=frame)
            d.rectangle(box, outline=(255, 255, 255), width=max(1, frame // 3))

        insets = []
        if columns.n and mpp:  # outlines at the pixels the model saw, where nuclei crowd
            insets = _insets(columns, classes, info, reader, region, mpp, _model_mpp(report, columns.attrs), paths)
        files.update({f"inset_{i}": paths[f"inset_{i}"] for i in range(1, len(insets) + 1)})

        if region != (0.0, 0.0, float(dims[0]), float(dims[1])):  # --roi: the overview shows what was segmented
            d = ImageDraw.Draw(overlay_img)
            x, y, w, h = region
            d.rectangle((x / scale, y / scale, (x + w) / scale - 1, (y + h) / scale - 1), outline=ROI_COLOR, width=max(2, max(thumb_w, thumb_h) // 400))
            notes.append(f"only the --roi region x {x:,.0f}-{x + w:,.0f}, y {y:,.0f}-{y + h:,.0f} (level 0) was segmented: boxed in blue on the overview")

        unreadable = [r for r in report.get("unreadable_regions") or [] if isinstance(r, dict) and isinstance(r.get("box"), list) and len(r["box"]) == 4]
        if unreadable:  # blocks the decoder could not read: red hatched boxes on the overview
            d = ImageDraw.Draw(overlay_img)
            width = max(2, max(thumb_w, thumb_h) // 500)
            for r in unreadable:
                x, y, w, h = (float(v) for v in r["box"])
                d.rectangle((x / scale, y / scale, (x + w) / scale, (y + h) / scale), outline=(220, 0, 0), width=width)
                d.line((x / scale, y / scale, (x + w) / scale, (y + h) / scale), fill=(220, 0, 0), width=width)
            notes.append(f"{len(unreadable)} unreadable block(s) of the slide (corrupt image data), boxed in red on the overview, were segmented as blank")

    mode = f"dots (nuclei < {OUTLINE_MIN_DIAMETER_PX:g} px at this scale; outlines in the zoomed crop, boxed)" if dots else "outlines"
    title = f"{stem}: {columns.n:,} nuclei, {mode}; 1 px = {scale:.2f} level-0 px"
    legend = [(c["class"], info.colors[c["index"]], c["count"]) for c in counts if c["count"] or len(counts) <= 12]
    _save_png(_with_legend(overlay_img, legend_strip(overlay_img.width, title, legend)), paths["overlay"])
    files["overlay"] = paths["overlay"]

    density_info = None
    if density is not None:
        per = density.per_mm2[density.counts > 0]
        density_info = {
            "bin_um": DENSITY_BIN_UM, "grid": list(density.counts.shape), "origin_level0": list(density.origin), "bin_level0_px": density.bin_px,
            "total": int(density.counts.sum()), "max_per_mm2": float(per.max()) if len(per) else 0.0,
            "median_nonempty_per_mm2": float(np.median(per)) if len(per) else 0.0,
        }
        title = f"{stem}: nuclei per mm² ({DENSITY_BIN_UM:g} µm bins)\npeak {density_info['max_per_mm2']:,.0f} / mm², median of non-empty bins {density_info['median_nonempty_per_mm2']:,.0f} / mm²"
        draw_density(paths["density"], density, thumb, scale, mpp, title)
        files["density"] = paths["density"]

    area_info = None
    if areas is None:
        notes.append("the store has no area measurement: no area histogram")
    else:
        area_info = draw_areas(paths["areas"], areas, classes, info, f"{stem}: nuclear area (µm²)")
        files["areas"] = paths["areas"]
    _write_class_counts(paths["class_counts"], counts)
    files["class_counts"] = paths["class_counts"]
    for kind in ("zoom", "density", "areas", *(f"inset_{i}" for i in range(1, INSETS + 1))):  # from an earlier rendering
        if kind not in files:
            paths[kind].unlink(missing_ok=True)
    summary = {
        "inputs": inputs, "rendered": time.strftime("%Y-%m-%d %H:%M:%S"), "stem": stem, "nuclei": columns.n,
        "files": {k: v.name for k, v in files.items()}, "class_counts": counts, "overlay": overlay_info, "zoom": zoom_info, "insets": insets,
        "density": density_info, "areas": area_info, "region_level0": list(region), "mpp": mpp, "notes": notes,
    }
    with atomic_file(paths["pictures"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return files | {"pictures": paths["pictures"]}

