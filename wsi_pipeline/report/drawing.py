"""Drawing the pictures: outlines, dots, the legend strip, the scale bar, the density grid
and the two charts.

Outlines are drawn with Pillow, one `polygon` call per nucleus on a flat coordinate list
scaled in numpy per chunk; centroid dots are painted by numpy indexing. Matplotlib (Agg,
object API, no pyplot state) draws only the two small charts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_file
from .run_reader import ClassInfo, NucleusColumns

DENSITY_BIN_UM = 100.0


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

def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # H&E barely compresses: level 6 was 1.5x slower, same size
