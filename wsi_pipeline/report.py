"""Pictures and one HTML page for a finished `promptnucseg segment` run: the morning-after check.

Why these pictures: before opening a million nuclei in QuPath, a pathologist wants to see
at a glance that the outlines sit on nuclei (overlay, with a zoomed crop when whole-slide
outlines would be too small to see), where the cellular regions are (density in
nuclei/mm²) and that nuclear sizes are plausible (area histogram, µm²).

Memory: the zarr store (`exporters.zarr_export`) is read one chunk of rows at a time;
only the per-nucleus class and area columns (6 bytes a nucleus) are held whole. Outlines
are drawn with Pillow, one `polygon` call per nucleus on a flat coordinate list scaled in
numpy per chunk; centroid dots are painted by numpy indexing. Matplotlib (Agg, object API,
no pyplot state) draws only the two small charts.

Files written beside `<stem>_report.json`: `<stem>_overlay.png` (thumbnail + legend strip
below it), `<stem>_overlay_zoom.png` (dots mode only), `<stem>_density.png`,
`<stem>_areas.png`, `<stem>_class_counts.csv`, and `<stem>_pictures.json`: the numbers
the pictures show plus what they were rendered from, so an up-to-date slide is skipped.
"""
from __future__ import annotations

import contextlib
import csv
import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import PipelineInputError
from .exporters.atomic import atomic_file
from .geometry import signed_areas

RENDERER_VERSION = 1
REPORT_SUFFIX = "_report.json"
PICTURES_SUFFIX = "_pictures.json"
OUTLINE_MIN_DIAMETER_PX = 3.0  # median nucleus narrower than this on the thumbnail: dots + zoom crop
ZOOM_DIAMETER_PX = 16.0  # median nucleus diameter in the zoom crop
ZOOM_SIDE_PX = 1024
DENSITY_BIN_UM = 100.0
FALLBACK_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


# ----- the zarr store, a chunk of rows at a time ------------------------------------------


class NucleusColumns:
    """Read-only view of a `<stem>.zarr` nuclei store; rows are read in chunk-sized slices."""

    REQUIRED = ("centroid", "class", "polygon_offsets", "polygon_coords")

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = Path(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            missing = [k for k in self.REQUIRED if k not in self.root]
        except Exception as err:  # zarr raises several types for a broken store
            raise PipelineInputError(self.path, f"is not a readable nuclei store ({type(err).__name__}: {err})", "rerun the slide with `promptnucseg segment --overwrite`") from err
        if missing:
            raise PipelineInputError(self.path, f"nuclei store lacks the arrays {', '.join(missing)}", "rerun the slide with `promptnucseg segment --overwrite`")
        self.attrs: dict[str, Any] = dict(self.root.attrs)
        self.n = int(self.root["class"].shape[0])
        self.chunk_rows = max(1, int(self.root["class"].chunks[0]))

    def row_slices(self) -> Iterator[slice]:
        for a in range(0, self.n, self.chunk_rows):
            yield slice(a, min(a + self.chunk_rows, self.n))

    def centroids(self, rows: slice) -> np.ndarray:
        return np.asarray(self.root["centroid"][rows], np.float64).reshape(-1, 2)

    def classes(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.root["class"][s], np.int64) for s in self.row_slices()]) if self.n else np.zeros(0, np.int64)

    def areas_um2(self) -> np.ndarray | None:
        if self.n == 0:
            return np.zeros(0)
        if "measurements" not in self.root or "area_um2" not in self.root["measurements"]:
            return None
        arr = self.root["measurements"]["area_um2"]
        return np.concatenate([np.asarray(arr[s], np.float64) for s in self.row_slices()]) if self.n else np.zeros(0)

    def rings(self, rows: slice, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, offsets, coords) of the outlines of `rows` (or its `keep` subset,
        local indices); offsets index into coords, which holds only the vertices read."""
        local = np.arange(rows.stop - rows.start) if keep is None else np.asarray(keep, np.int64)
        if not len(local):
            return local, np.zeros(1, np.int64), np.zeros((0, 2))
        lo, hi = int(local.min()), int(local.max())
        o = np.asarray(self.root["polygon_offsets"][rows.start + lo : rows.start + hi + 2], np.int64)
        coords = np.asarray(self.root["polygon_coords"][int(o[0]) : int(o[-1])], np.float64).reshape(-1, 2)
        starts, ends = o[local - lo] - o[0], o[local - lo + 1] - o[0]
        if keep is None:
            return local + rows.start, o - o[0], coords
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(local) else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return local + rows.start, offsets, coords[take]


# ----- class names and colours ------------------------------------------------------------


@dataclass
class ClassInfo:
    names: list[str]
    colors: list[tuple[int, int, int]]

    @staticmethod
    def from_metadata(attrs: dict[str, Any], report: dict[str, Any], n_classes: int) -> "ClassInfo":
        model = report.get("model") if isinstance(report.get("model"), dict) else {}
        names = [str(c) for c in (attrs.get("class_names") or model.get("class_names") or list(report.get("class_counts") or {}))]
        colors: list[tuple[int, int, int]] = []
        for c in attrs.get("class_colors") or []:
            try:
                colors.append(tuple(int(v) for v in list(c)[:3]))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                colors.append(FALLBACK_COLORS[len(colors) % len(FALLBACK_COLORS)])
        k = max(n_classes, len(names))
        names += [f"class {i}" for i in range(len(names), k)]
        colors += [FALLBACK_COLORS[i % len(FALLBACK_COLORS)] for i in range(len(colors), k)]
        return ClassInfo(names, colors)


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


# ----- fonts and the legend strip -----------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's own files (always installed with it), else Pillow's."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)
    except Exception:
        return ImageFont.load_default(size)


def _wrap(text: str, font: Any, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def legend_strip(width: int, title: str, entries: list[tuple[str, tuple[int, int, int], int]]) -> Image.Image:
    """A white strip: the (wrapped) title, then wrapped swatch + 'name  count (pct)' entries."""
    size = int(np.clip(width / 70, 12, 28))
    font = _font(size)
    pad, line = size // 2, int(size * 1.5)
    title_lines = _wrap(title, font, width - 2 * pad)
    total = sum(c for _, _, c in entries) or 1
    labels = [f"{name}  {count:,} ({100 * count / total:.1f}%)" for name, _, count in entries]
    widths = [size * 2 + int(font.getlength(t)) + size * 2 for t in labels]
    rows, x = 1, pad
    for w in widths:
        if x + w > width - pad and x > pad:
            rows, x = rows + 1, pad
        x += w
    strip = Image.new("RGB", (width, pad * 2 + line * (len(title_lines) + rows * bool(entries))), "white")
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(title_lines):
        draw.text((pad, pad + i * line), text, fill=(20, 20, 20), font=font)
    x, y = pad, pad + line * len(title_lines)
    for (name, color, _), text, w in zip(entries, labels, widths):
        if x + w > width - pad and x > pad:
            x, y = pad, y + line
        draw.rectangle((x, y + size // 6, x + size, y + size + size // 6), fill=color, outline=(60, 60, 60))
        draw.text((x + int(size * 1.5), y), text, fill=(20, 20, 20), font=font)
        x += w
    return strip


def _with_legend(picture: Image.Image, strip: Image.Image) -> Image.Image:
    out = Image.new("RGB", (picture.width, picture.height + strip.height), "white")
    out.paste(picture, (0, 0))
    out.paste(strip, (0, picture.height))
    return out


# ----- drawing ----------------------------------------------------------------------------


def draw_outlines(canvas: Image.Image, offsets: np.ndarray, coords: np.ndarray, classes: np.ndarray, colors: list[tuple[int, int, int]], origin: tuple[float, float], scale: float, width: int = 1) -> None:
    """Level-0 rings onto `canvas`, whose pixel (i, j) covers level-0 [origin + i*scale, +scale).

    Vertices are scaled in numpy once per call; Pillow then draws each ring from a slice of
    one flat list (no per-vertex Python objects), grouped by class so the colour is fixed.
    """
    if len(offsets) <= 1:
        return
    draw = ImageDraw.Draw(canvas)
    # a level-0 coordinate u falls in canvas pixel floor((u - origin) / scale); Pillow draws pixel round(v)
    flat = ((coords - np.asarray(origin, np.float64)) / scale - 0.5).ravel().tolist()
    for c in np.unique(classes):
        color = colors[int(c)] if 0 <= c < len(colors) else (0, 0, 0)
        for k in np.flatnonzero(classes == c):
            a, b = 2 * int(offsets[k]), 2 * int(offsets[k + 1])
            if b - a >= 6:
                ring = flat[a:b]
                if width == 1:
                    draw.polygon(ring, outline=color)
                else:
                    draw.line(ring + ring[:2], fill=color, width=width, joint="curve")


def draw_scale_bar(image: Image.Image, um_per_px: float) -> float:
    """A 1-2-5 x 10^k um bar, about a fifth of the width, bottom left, black on a white
    box so it reads on any tissue; returns its length in um."""
    target = image.width * um_per_px / 5
    k = 10 ** math.floor(math.log10(target))
    length = max(m * k for m in (1, 2, 5) if m * k <= target)
    px = int(round(length / um_per_px))
    d = ImageDraw.Draw(image)
    x0, y1 = 12, image.height - 12
    label = f"{length:g} µm"
    d.rectangle((x0 - 6, y1 - 30, x0 + max(px, 60) + 6, y1 + 6), fill=(255, 255, 255))
    d.rectangle((x0, y1 - 6, x0 + px, y1), fill=(0, 0, 0))
    d.text((x0, y1 - 26), label, fill=(0, 0, 0), font=_font(18))
    return length


def paint_dots(pixels: np.ndarray, xy: np.ndarray, classes: np.ndarray, colors: list[tuple[int, int, int]], scale: float, size: int) -> None:
    """Square dots of `size` px at level-0 points, in place on an (H, W, 3) thumbnail array."""
    h, w = pixels.shape[:2]
    col = np.floor(xy[:, 0] / scale).astype(np.int64) - (size - 1) // 2
    row = np.floor(xy[:, 1] / scale).astype(np.int64) - (size - 1) // 2
    palette = np.array(list(colors) + [(0, 0, 0)], np.uint8)
    rgb = palette[np.where((classes >= 0) & (classes < len(colors)), classes, len(colors))]
    for dy in range(size):
        for dx in range(size):
            r, c = row + dy, col + dx
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            pixels[r[ok], c[ok]] = rgb[ok]


# ----- density ----------------------------------------------------------------------------


@dataclass
class DensityGrid:
    """Nucleus counts on square bins of `bin_px` level-0 px from `origin`; edge bins are
    clipped to the region, and `area_mm2` holds each bin's true area."""

    counts: np.ndarray  # (rows, cols) int64
    origin: tuple[float, float]  # level-0 x, y of the region's top-left corner
    size: tuple[float, float]  # level-0 width, height of the region
    bin_px: float
    area_mm2: np.ndarray  # (rows, cols)

    @staticmethod
    def empty(region: tuple[float, float, float, float], mpp: float, bin_um: float = DENSITY_BIN_UM) -> "DensityGrid":
        x, y, w, h = region
        bin_px = bin_um / mpp
        cols, rows = max(1, math.ceil(w / bin_px)), max(1, math.ceil(h / bin_px))
        bw = np.minimum(bin_px, w - np.arange(cols) * bin_px)
        bh = np.minimum(bin_px, h - np.arange(rows) * bin_px)
        area = np.outer(bh, bw) * (mpp / 1000.0) ** 2
        return DensityGrid(np.zeros((rows, cols), np.int64), (float(x), float(y)), (float(w), float(h)), float(bin_px), area)

    def add(self, xy: np.ndarray) -> None:
        rows, cols = self.counts.shape
        c = np.clip(np.floor((xy[:, 0] - self.origin[0]) / self.bin_px).astype(np.int64), 0, cols - 1)
        r = np.clip(np.floor((xy[:, 1] - self.origin[1]) / self.bin_px).astype(np.int64), 0, rows - 1)
        self.counts += np.bincount(r * cols + c, minlength=rows * cols).reshape(rows, cols)

    @property
    def per_mm2(self) -> np.ndarray:
        return self.counts / np.maximum(self.area_mm2, 1e-12)

    def densest_window(self, side_px: float) -> tuple[float, float]:
        """Level-0 centre of the `side_px`-wide square window holding the most nuclei."""
        k = max(1, min(int(round(side_px / self.bin_px)), *self.counts.shape))
        s = np.pad(self.counts.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        sums = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
        r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
        return self.origin[0] + (c + k / 2) * self.bin_px, self.origin[1] + (r + k / 2) * self.bin_px


def nucleus_density(columns: NucleusColumns, region: tuple[float, float, float, float], mpp: float, bin_um: float = DENSITY_BIN_UM) -> DensityGrid:
    """Nuclei per bin over `region` (level-0 x, y, w, h), streamed from the store."""
    grid = DensityGrid.empty(region, mpp, bin_um)
    for rows in columns.row_slices():
        grid.add(columns.centroids(rows))
    return grid


# ----- charts (matplotlib, object API) -------------------------------------------------------


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


def draw_density(path: Path, grid: DensityGrid, backdrop: np.ndarray | None, backdrop_scale: float, mpp: float, title: str) -> None:
    """Heatmap of nuclei/mm² over a faded grey copy of the slide, colour bar in nuclei/mm²."""
    rows, cols = grid.counts.shape
    x0, y0 = grid.origin
    region_w, region_h = grid.size
    mm = mpp / 1000.0
    extent_edges = (x0 * mm, (x0 + cols * grid.bin_px) * mm, (y0 + rows * grid.bin_px) * mm, y0 * mm)
    aspect = max(0.2, min(5.0, region_h / max(region_w, 1e-9)))
    fig = _figure(8.0, min(12.0, max(3.5, 6.6 * aspect + 1.2)))
    ax = fig.add_subplot()
    if backdrop is not None:
        r0, c0 = int(y0 / backdrop_scale), int(x0 / backdrop_scale)
        r1, c1 = int(math.ceil((y0 + region_h) / backdrop_scale)), int(math.ceil((x0 + region_w) / backdrop_scale))
        crop = backdrop[r0:r1, c0:c1]
        if crop.size:
            extent = (c0 * backdrop_scale * mm, (c0 + crop.shape[1]) * backdrop_scale * mm, (r0 + crop.shape[0]) * backdrop_scale * mm, r0 * backdrop_scale * mm)
            small = Image.fromarray(crop).convert("L")
            small.thumbnail((800, 800), Image.Resampling.BOX)  # the chart is ~650 px wide; resampling 2048 px in matplotlib costs seconds
            grey = np.asarray(small, np.float32) / 255.0
            ax.imshow(0.55 + 0.45 * grey, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="bilinear")
    density = np.ma.masked_equal(grid.per_mm2, 0)
    vmax = float(density.max()) if density.count() else 1.0
    im = ax.imshow(density, cmap="viridis", vmin=0, vmax=vmax, extent=extent_edges, alpha=0.85, interpolation="nearest")
    ax.set_xlim(x0 * mm, (x0 + region_w) * mm)
    ax.set_ylim((y0 + region_h) * mm, y0 * mm)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(im, ax=ax, shrink=0.85)
    bar.set_label("nuclei / mm²")
    _save_figure(fig, path)


def draw_areas(path: Path, areas: np.ndarray, classes: np.ndarray, info: ClassInfo, title: str) -> dict[str, Any]:
    """Histogram of nuclear areas (µm²), one outline per class when there are several.

    The x axis stops at the 99.5th percentile so one merged blob does not squash the
    chart; how many nuclei lie beyond is written on it. Returns the numbers shown."""
    ok = np.isfinite(areas)
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    stats: dict[str, Any] = {"median_um2": None, "per_class": {}, "x_max_um2": None, "beyond_x_max": 0, "shown": 0}
    if not ok.any():
        ax.text(0.5, 0.5, "no nuclei", ha="center", va="center", transform=ax.transAxes)
    else:
        a, cls = areas[ok], classes[ok]
        top = float(np.percentile(a, 99.5)) * 1.02 or 1.0
        bins = np.linspace(0.0, top, 61)
        present = [int(c) for c in np.unique(cls)]
        stats.update({"median_um2": float(np.median(a)), "x_max_um2": top, "beyond_x_max": int(np.sum(a > top))})
        for c in present:
            sel = a[cls == c]
            name, color = info.names[c] if 0 <= c < len(info.names) else str(c), info.colors[c] if 0 <= c < len(info.colors) else (0, 0, 0)
            counts, _ = np.histogram(sel, bins)
            stats["per_class"][name] = {"count": int(len(sel)), "median_um2": float(np.median(sel)), "shown": int(counts.sum())}
            stats["shown"] += int(counts.sum())
            rgb = tuple(v / 255 for v in color)
            label = f"{name}: {len(sel):,} nuclei, median {np.median(sel):.1f} µm²"
            if len(present) == 1:
                ax.hist(sel, bins, color=rgb, alpha=0.75, edgecolor=rgb, label=label)
            else:
                ax.hist(sel, bins, histtype="step", color=rgb, linewidth=1.8, label=label)
        ax.set_xlim(0, top)
        ax.legend(fontsize=8, frameon=False)
    beyond = stats["beyond_x_max"]
    ax.set_xlabel("nuclear area (µm²)" + (f"; {beyond:,} {'nucleus' if beyond == 1 else 'nuclei'} above {stats['x_max_um2']:.0f} µm² not shown" if beyond else ""))
    ax.set_ylabel("nuclei")
    ax.set_title(title, fontsize=10)
    _save_figure(fig, path)
    return stats


# ----- one slide --------------------------------------------------------------------------


def stem_of(report_path: Path) -> str:
    return report_path.name[: -len(REPORT_SUFFIX)]


def find_report(folder: Path) -> Path | None:
    """`<folder>/<folder name>_report.json`, else the folder's only `*_report.json`."""
    own = folder / f"{folder.name}{REPORT_SUFFIX}"
    if own.is_file():
        return own
    found = sorted(folder.glob(f"*{REPORT_SUFFIX}"))
    return found[0] if found else None


def picture_paths(folder: Path, stem: str) -> dict[str, Path]:
    return {
        "overlay": folder / f"{stem}_overlay.png",
        "zoom": folder / f"{stem}_overlay_zoom.png",
        "density": folder / f"{stem}_density.png",
        "areas": folder / f"{stem}_areas.png",
        "class_counts": folder / f"{stem}_class_counts.csv",
        "pictures": folder / f"{stem}{PICTURES_SUFFIX}",
    }


def _zarr_path(folder: Path, stem: str, report: dict[str, Any]) -> Path:
    """The store named in the report's outputs, looked up beside the report (the run's
    folder may have been moved or opened from another machine)."""
    named = (report.get("outputs") or {}).get("zarr")
    if named and (folder / Path(named).name).exists():
        return folder / Path(named).name
    return folder / f"{stem}.zarr"


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _inputs(report_path: Path, zarr_path: Path, max_side: int) -> dict[str, Any]:
    return {"renderer": RENDERER_VERSION, "max_side": int(max_side), "report": _stamp(report_path), "zarr": _stamp(zarr_path / "zarr.json")}


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PipelineInputError(path, f"is not readable JSON ({err})", "rerun the slide with `promptnucseg segment`; the file may be from a killed run") from err
    if not isinstance(data, dict):
        raise PipelineInputError(path, "holds no JSON object", "rerun the slide with `promptnucseg segment`")
    return data


def pictures_up_to_date(folder: Path, max_side: int = 2048) -> bool:
    """True when the pictures exist and were rendered from the current report and store."""
    report_path = find_report(folder)
    if report_path is None:
        return False
    stem = stem_of(report_path)
    paths = picture_paths(folder, stem)
    try:
        done = json.loads(paths["pictures"].read_text())
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return False
    if done.get("inputs") != _inputs(report_path, _zarr_path(folder, stem, report), max_side):
        return False
    return all((folder / name).is_file() for name in (done.get("files") or {}).values())


def _mpp(report: dict[str, Any], attrs: dict[str, Any]) -> float | None:
    for value in (report.get("mpp_used"), attrs.get("slide_mpp"), (report.get("slide_facts") or {}).get("mpp")):
        try:
            if value is not None and float(value) > 0 and math.isfinite(float(value)):
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _region(report: dict[str, Any], attrs: dict[str, Any], dims: tuple[int, int]) -> tuple[float, float, float, float]:
    """The level-0 region that was segmented (x, y, w, h): the ROI if one was given."""
    roi = attrs.get("roi") or (report.get("settings") or {}).get("roi")
    if isinstance(roi, (list, tuple)) and len(roi) == 4:
        return tuple(float(v) for v in roi)  # type: ignore[return-value]
    return 0.0, 0.0, float(dims[0]), float(dims[1])


def _open_slide_pixels(report: dict[str, Any], folder: Path) -> tuple[Any, str | None]:
    """The slide reader, or None and why not (pictures then draw on white)."""
    from .slides import open_slide

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
    crop = reader.read_scaled(x0, y0, out_w, out_h, zoom_scale) if reader is not None else np.full((out_h, out_w, 3), 255, np.uint8)
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


def render_slide_report(slide_folder: Path, max_side: int = 2048, *, skip_up_to_date: bool = False, zoom_side: int = ZOOM_SIDE_PX) -> dict[str, Path]:
    """Render one finished slide's pictures beside its `<stem>_report.json`.

    Returns {"overlay", ["zoom",] "density", "areas", "class_counts", "pictures"} -> path
    ("density" needs the slide's mpp, "areas" the area measurement). `skip_up_to_date`
    returns the existing files untouched when they match the current report and store.
    """
    folder = Path(slide_folder)
    report_path = find_report(folder)
    if report_path is None:
        raise PipelineInputError(folder, f"has no *{REPORT_SUFFIX}", "pass the folder of a slide that `promptnucseg segment` finished")
    stem = stem_of(report_path)
    paths = picture_paths(folder, stem)
    if skip_up_to_date and pictures_up_to_date(folder, max_side):
        done = json.loads(paths["pictures"].read_text())
        return {k: folder / v for k, v in done["files"].items()} | {"pictures": paths["pictures"]}
    report = load_json(report_path)
    if report.get("status", "complete") != "complete":
        raise PipelineInputError(report_path, f"slide is not finished (status {report.get('status')!r})", "rerun the slide with `promptnucseg segment`")
    zarr_path = _zarr_path(folder, stem, report)
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
        mpp = _mpp(report, columns.attrs)

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
    for kind in ("zoom", "density", "areas"):  # left from an earlier rendering that drew them
        if kind not in files:
            paths[kind].unlink(missing_ok=True)
    summary = {
        "inputs": inputs, "rendered": time.strftime("%Y-%m-%d %H:%M:%S"), "stem": stem, "nuclei": columns.n,
        "files": {k: v.name for k, v in files.items()}, "class_counts": counts, "overlay": overlay_info, "zoom": zoom_info,
        "density": density_info, "areas": area_info, "region_level0": list(region), "mpp": mpp, "notes": notes,
    }
    with atomic_file(paths["pictures"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return files | {"pictures": paths["pictures"]}


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # H&E barely compresses: level 6 was 1.5x slower, same size


# ----- the run's HTML page -------------------------------------------------------------------


@dataclass
class SlideEntry:
    """One slide folder of a run: finished (report ok), failed, or unfinished."""

    folder: Path
    stem: str
    state: str  # "finished", "failed", "unfinished"
    report: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    pictures: dict[str, Any] | None = None


def find_slides(out_dir: Path) -> list[SlideEntry]:
    """Every slide folder under `out_dir` (and `out_dir` itself if it is one), by stem."""
    from .journal import Journal

    entries: list[SlideEntry] = []
    folders = [out_dir] + sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr"))
    for folder in folders:
        report_path = find_report(folder)
        journal = Journal(folder)
        if report_path is None:
            if journal.work.is_dir():
                n = len(journal.done())
                entries.append(SlideEntry(folder, folder.name, "unfinished", problem=f"{n} batch{'es' if n != 1 else ''} of tiles done so far; run the same `promptnucseg segment` command again to resume"))
            continue
        stem = stem_of(report_path)
        try:
            report = load_json(report_path)
        except PipelineInputError as err:
            entries.append(SlideEntry(folder, stem, "failed", problem=str(err)))
            continue
        status = str(report.get("status", "complete"))
        if status != "complete":
            why = report.get("error") or f"status {status!r}"
            entries.append(SlideEntry(folder, stem, "failed", report, problem=str(why)))
        elif journal.work.is_dir():
            entries.append(SlideEntry(folder, stem, "unfinished", report, problem="a rerun is in progress or was killed (the .work journal is present); the outputs may be from the earlier run"))
        else:
            entries.append(SlideEntry(folder, stem, "finished", report))
    return sorted(entries, key=lambda e: e.stem)


def render_run_report(out_dir: Path, max_side: int = 2048, *, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Render every finished slide's pictures (skipping up-to-date ones unless `force`),
    then write `out_dir/report.html` and return its path. A slide whose pictures fail is
    listed with the reason; the others go on."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise PipelineInputError(out_dir, "is not a folder", "pass the --out folder of a `promptnucseg segment` run")
    entries = find_slides(out_dir)
    if not any(e.state == "finished" for e in entries):
        raise PipelineInputError(out_dir, f"has no finished slide (no <stem>/<stem>{REPORT_SUFFIX} with status complete)", "pass the --out folder of a `promptnucseg segment` run, or wait until a slide has finished")
    for e in entries:
        if e.state != "finished":
            continue
        try:
            started = time.monotonic()
            fresh = not force and pictures_up_to_date(e.folder, max_side)
            files = render_slide_report(e.folder, max_side, skip_up_to_date=not force)
            e.pictures = json.loads(files["pictures"].read_text())
            if log:
                log(f"{e.stem}: pictures {'up to date' if fresh else f'rendered in {time.monotonic() - started:.1f} s'}")
        except Exception as err:  # one broken store must not hide the other slides
            e.problem = f"pictures could not be drawn: {err}"
            if log:
                log(f"{e.stem}: {e.problem}")
    path = out_dir / "report.html"
    with atomic_file(path) as tmp:
        tmp.write_text(run_report_html(out_dir, entries), encoding="utf-8")
    return path


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return html.escape(str(value))


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    h, rest = divmod(int(round(s)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def _model_name(report: dict[str, Any]) -> str:
    model = report.get("model")
    if not isinstance(model, dict):
        return str(model) if model else "—"
    name = str(model.get("model") or "—")
    weights = model.get("weights")
    return f"{name} ({Path(str(weights)).name})" if weights else name


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#f4f4f6}
header{background:#2b2d42;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#d8d8e0;font-size:14px}
main{padding:8px 28px 40px;max-width:1500px}
nav{margin:14px 0;font-size:14px}nav a{margin-right:14px}
section{background:#fff;border-radius:8px;padding:16px 22px;margin:18px 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{margin:0 0 10px;font-size:19px}.state{font-size:12px;padding:2px 8px;border-radius:10px;margin-left:8px;vertical-align:middle;color:#fff}
.finished{background:#2a9d5b}.failed{background:#c0392b}.unfinished{background:#d68910}
table{border-collapse:collapse;font-size:14px;margin:6px 0 12px}td,th{padding:4px 12px 4px 0;text-align:left;border-bottom:1px solid #eee}
td.n,th.n{text-align:right}.figs td:first-child{color:#666}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:-1px}
.pics{display:flex;flex-wrap:wrap;gap:14px}.pics figure{margin:0;flex:1 1 520px;max-width:100%}
.pics img{max-width:100%;height:auto;border:1px solid #ddd}.pics figure.wide{flex-basis:100%}
figcaption{font-size:13px;color:#555;margin-top:3px}
.note{color:#8a5a00;background:#fff6e0;border-left:3px solid #d68910;padding:6px 10px;margin:8px 0;font-size:14px}
.err{color:#922;background:#fdecea;border-left-color:#c0392b}
.cols{display:flex;flex-wrap:wrap;gap:36px}small{color:#666}details{font-size:14px;margin:4px 0 10px}summary{cursor:pointer;color:#444}
"""


def _rel(path: Path, base: Path) -> str:
    return html.escape(os.path.relpath(path, base).replace(os.sep, "/"), quote=True)


# Weights licences by model-name prefix (the bundle does not carry one yet; see models/weights/MODEL_CARD.md)
LICENCES = {"promptnucseg-light-kumar": "CC BY-NC-SA 4.0: non-commercial use only, share-alike (trained on MoNuSeg)"}


def weights_licence(model_name: str) -> str:
    """The licence of a model's weights, for every version of a named model (v1, -v2, ...)."""
    return next((text for prefix, text in LICENCES.items() if model_name.startswith(prefix)), "see the model file's documentation")


def _accuracy(r: dict[str, Any]) -> str:
    """The model's own validation figures, as the model file records them."""
    metrics = (r.get("model") or {}).get("metrics") if isinstance(r.get("model"), dict) else None
    if not isinstance(metrics, dict):
        return "—"
    parts = []
    val = metrics.get("validation") or {}
    if val.get("pq") is not None and val.get("aji") is not None:  # the model's whole-image scores, when its file has them
        parts.append(f"PQ {float(val['pq']):.2f}, AJI {float(val['aji']):.2f}")
    f1 = val.get("det_f1", (metrics.get("prompter") or {}).get("val_det_f1"))
    iou = (metrics.get("segmentor") or {}).get("val_oracle_miou")
    if f1 is not None:
        parts.append(f"detection F1 {float(f1):.2f}")
    if iou is not None:
        parts.append(f"mask IoU {float(iou):.2f} (given the right point)")
    return (", ".join(parts) + " <small>on held-out training-set images; see the model card</small>") if parts else "—"


def _figures_table(entry: SlideEntry) -> str:
    """What the tissue holds first; the run's engineering figures folded into a details box."""
    r = entry.report
    pics = entry.pictures or {}
    dims = (r.get("slide_facts") or {}).get("dimensions")
    model = r.get("model") if isinstance(r.get("model"), dict) else {}
    rows = [
        ("slide file", html.escape(str(r.get("slide", "—")))),
        ("tissue", f"{_num(r.get('tissue_mm2'), 2)} mm²" if r.get("tissue_mm2") is not None else "—"),
        ("nuclei", _num(r.get("nuclei")) + (f" <small>({_num(r['small_masks_dropped'])} fragments below {_num(r.get('min_nucleus_um2'), 1)} µm² left out)</small>" if r.get("small_masks_dropped") else "")),
        ("nuclei per mm² of tissue", _num(r.get("nuclei_per_mm2_tissue"))),
        ("median nucleus area", f"{_num(r.get('median_area_um2'), 1)} µm²" if r.get("median_area_um2") is not None else "—"),
        ("µm per pixel", f"{_num(r.get('mpp_used'), 4)} <small>from {html.escape(str(r.get('mpp_source', '—')))}</small>"),
        ("model", html.escape(_model_name(r)) + (f" <small>at {_num(r.get('model_mpp'), 3)} µm/px</small>" if r.get("model_mpp") else "")),
        ("model accuracy", _accuracy(r)),
        ("weights licence", html.escape(weights_licence(str(model.get("model"))))),
    ]
    if (r.get("settings") or {}).get("roi"):
        rows.append(("region", "level-0 x, y, w, h = " + html.escape(", ".join(str(v) for v in r["settings"]["roi"]))))
    if (pics.get("density") or {}).get("max_per_mm2") is not None:
        d = pics["density"]
        rows.append(("density", f"peak {_num(d['max_per_mm2'])} / mm², median {_num(d['median_nonempty_per_mm2'])} / mm² <small>(non-empty {_num(d['bin_um'])} µm bins)</small>"))
    details = [
        ("level-0 size", f"{dims[0]:,} × {dims[1]:,} px" if isinstance(dims, list) and len(dims) == 2 else "—"),
        ("tiles", f"{_num(r.get('tiles'))}" + (f" <small>of {_num(r.get('tiles_in_grid'))} in the grid; tissue {100 * float(r['tissue_fraction']):.0f}% of the slide</small>" if r.get("tissue_fraction") is not None else "")),
        ("wall time", _duration(r.get("wall_seconds")) + (" <small>(resumed)</small>" if r.get("resumed") else "")),
        ("tiles / s", _num(r.get("tiles_per_second"), 2)),
        ("nuclei / s", _num(r.get("nuclei_per_second"), 1)),
        ("peak RAM", f"{_num(r.get('peak_rss_mb'))} MB" if r.get("peak_rss_mb") is not None else "—"),
        ("stain vectors", html.escape(str((r.get("stains") or {}).get("source", "—")))),
    ]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    more = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in details)
    return f'<table class="figs">{body}</table><details><summary>Run details</summary><table class="figs">{more}</table></details>'


def _qupath_line(entry: SlideEntry) -> str:
    geojson = (entry.report.get("outputs") or {}).get("geojson")
    if not geojson:
        return ""
    name = Path(str(geojson)).name
    how = f"<b>Open in QuPath:</b> open the slide, then <i>File &gt; Import objects</i> and pick <code>{html.escape(name)}</code>"
    if name.endswith(".gz"):
        how += " <small>(QuPath's importer does not read .gz: use scripts/qupath/import_promptnucseg.groovy)</small>"
    return f"<p>{how}</p>"


def _swatch(color: str | None) -> str:
    return f'<span class="swatch" style="background:{html.escape(color, quote=True)}"></span>' if color else ""


def _class_table(entry: SlideEntry) -> str:
    counts = (entry.pictures or {}).get("class_counts")
    if counts is None:  # pictures missing: fall back to the report's own counts
        counts = [{"class": k, "count": int(v), "color": None} for k, v in (entry.report.get("class_counts") or {}).items()]
    total = sum(c["count"] for c in counts) or 1
    rows = "".join(
        f"<tr><td>{_swatch(c.get('color'))}{html.escape(str(c['class']))}</td>"
        f"<td class=n>{c['count']:,}</td><td class=n>{100 * c['count'] / total:.1f}%</td></tr>"
        for c in counts
    )
    return f"<table><tr><th>class</th><th class=n>nuclei</th><th class=n>share</th></tr>{rows}<tr><th>all</th><th class=n>{sum(c['count'] for c in counts):,}</th><th></th></tr></table>"


def _outputs_list(entry: SlideEntry, base: Path) -> str:
    links = []
    for kind, named in (entry.report.get("outputs") or {}).items():
        p = entry.folder / Path(str(named)).name
        if p.exists():
            links.append(f'<a href="{_rel(p, base)}">{html.escape(p.name)}</a> <small>({html.escape(kind)})</small>')
    csv_name = ((entry.pictures or {}).get("files") or {}).get("class_counts")
    if csv_name:
        links.append(f'<a href="{_rel(entry.folder / csv_name, base)}">{html.escape(csv_name)}</a> <small>(class counts)</small>')
    return "<p><b>Files:</b> " + " · ".join(links) + "</p>" if links else ""


def _picture(entry: SlideEntry, base: Path, kind: str, caption: str, wide: bool = False) -> str:
    name = ((entry.pictures or {}).get("files") or {}).get(kind)
    if not name:
        return ""
    src = _rel(entry.folder / name, base)
    return f'<figure{" class=wide" if wide else ""}><a href="{src}"><img src="{src}" alt="{html.escape(caption, quote=True)}" loading="lazy"></a><figcaption>{html.escape(caption)}</figcaption></figure>'


def _section(entry: SlideEntry, base: Path) -> str:
    anchor = html.escape(entry.stem, quote=True)
    head = f'<h2 id="{anchor}">{html.escape(entry.stem)}<span class="state {entry.state}">{entry.state}</span></h2>'
    if entry.state != "finished":
        kind = "note err" if entry.state == "failed" else "note"
        return f'<section>{head}<p class="{kind}">{html.escape(entry.problem or entry.state)}</p><p><small>{html.escape(str(entry.folder))}</small></p></section>'
    pics = entry.pictures or {}
    notes = [html.escape(n) for n in pics.get("notes", [])]
    if entry.problem:
        notes.append(html.escape(entry.problem))
    notes += [html.escape("Check this result: " + w) for w in entry.report.get("warnings") or []]
    mode = (pics.get("overlay") or {}).get("mode")
    overlay_caption = "Slide thumbnail with every nucleus outlined in its class colour" if mode == "outlines" else "Slide thumbnail with every nucleus as a dot in its class colour; the box marks the zoomed crop"
    figures = (
        _picture(entry, base, "overlay", overlay_caption, wide=True)
        + _picture(entry, base, "zoom", "Densest region at a resolution where outlines are visible (scale bar in µm)", wide=True)
        + _picture(entry, base, "density", "Nuclei per mm² on 100 µm bins")
        + _picture(entry, base, "areas", "Nuclear areas (µm²)")
    )
    return (
        f"<section>{head}"
        + "".join(f'<p class="note">{n}</p>' for n in notes)
        + f'<div class="cols"><div>{_figures_table(entry)}</div><div>{_class_table(entry)}</div></div>'
        + _qupath_line(entry)
        + _outputs_list(entry, base)
        + (f'<div class="pics">{figures}</div>' if figures else "")
        + "</section>"
    )


def run_report_html(out_dir: Path, entries: list[SlideEntry]) -> str:
    """The page: a run summary, a link per slide, then one section per slide."""
    done = [e for e in entries if e.state == "finished"]
    nuclei = sum(int(e.report.get("nuclei") or 0) for e in done)
    wall = sum(float(e.report.get("wall_seconds") or 0) for e in done)
    states = {s: sum(e.state == s for e in entries) for s in ("finished", "failed", "unfinished")}
    summary = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    nav = "".join(f'<a href="#{html.escape(e.stem, quote=True)}">{html.escape(e.stem)}</a>' for e in entries)
    title = f"promptnucseg run: {out_dir.resolve().name}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(str(out_dir.resolve()))}</p>"
        f"<p>{len(entries)} slide{'s' if len(entries) != 1 else ''}: {summary} · {nuclei:,} nuclei · {_duration(wall)} of segmentation · page made {time.strftime('%Y-%m-%d %H:%M')}</p></header>"
        f"<main><nav>{nav}</nav>" + "".join(_section(e, out_dir) for e in entries) + "</main></body></html>\n"
    )
