"""The slide reader interface every backend implements (`slide_backends.py`).

A `SlideReader` hands out uint8 RGB regions of any pyramid level, resampled reads at an
exact scale, and its microns per pixel with where they came from. `opened` is how a reader
comes to life (probe-read, mpp override applied), from `slides.open_slide` and when a
pickled reader is rebuilt in a dask worker; so this module imports no backend and no
backend imports `slides.py`: slides -> slide_backends -> slide_reader, no cycle.
"""
from __future__ import annotations

import math
import warnings
from abc import ABC
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from promptnucseg.models.interface import to_rgb_uint8
from .errors import PipelineInputError

MPP_FIX = "pass --mpp, e.g. --mpp 0.25 for 40x, 0.5 for 20x"
CORRUPT_FIX = "the file is truncated or corrupt: copy it again or re-export it from the scanner software"
UNREADABLE_BLOCK = 256  # level px: a read that fails is retried in blocks this size, on a grid fixed to the level


def _detail(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


class UnreadableRegion(PipelineInputError):
    """Pixels a decoder cannot read (a corrupt tile): `regions` names each unreadable block as
    {"level", "box": level-0 [x, y, w, h], "error"}; `pixels`, when set, is the read with those
    blocks white, so a caller that can go on (the runner) keeps the rest."""

    def __init__(self, path: str | Path, regions: list[dict[str, Any]], pixels: np.ndarray | None = None) -> None:
        self.regions = regions
        self.pixels = pixels
        first = regions[0]
        more = f" and {len(regions) - 1} more block(s)" if len(regions) > 1 else ""
        super().__init__(path, f"cannot read pixels at level {first['level']}, level-0 box x,y,w,h = {','.join(str(v) for v in first['box'])}{more} ({first['error']})", CORRUPT_FIX)

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.regions))


# A pyramid level may be up to this much coarser than asked for and still be used (OpenSlide
# reports 2.0005 for a "2x" level; reading level 0 instead would cost 4x the I/O).
LEVEL_TOLERANCE = 0.01


def mpp_from_resolution(resolution: float, unit: str) -> float | None:
    """TIFF-style pixels-per-unit -> um/px; None when the unit is "none" or the value is unusable."""
    um_per_unit = {"inch": 25400.0, "centimeter": 1e4, "cm": 1e4, "millimeter": 1e3, "mm": 1e3,
                   "micrometer": 1.0, "um": 1.0}.get(str(unit).lower())
    if um_per_unit is None or not resolution or not math.isfinite(resolution) or resolution <= 0:
        return None
    return um_per_unit / float(resolution)


class SlideReader(ABC):
    """A slide (or plain image) opened for reading, whatever the file format.

    Subclasses fill in the geometry and metadata in `__init__` and implement either
    `_read_inside` (array-like levels, addressed in level pixels) or `_read_at` (readers
    addressed by level-0 location, like OpenSlide, whose windows may start at a fractional
    level pixel: `_origin_of` says where). Reads are safe to run from several threads at once.
    """

    backend: str = "abstract"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.vendor: str = "unknown"
        self.objective_power: float | None = None
        self.mpp: float | None = None
        self.mpp_source: str = "none"
        self.metadata_mpp: float | None = None
        self.metadata_mpp_source: str = "none"
        self._mpp_override: float | None = None
        self.unreadable_seen: list[dict[str, Any]] = []  # corrupt blocks met by overview reads (read_downsampled)

    # ----- geometry ------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level not coarser than `downsample` (within LEVEL_TOLERANCE); 0 if none."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + LEVEL_TOLERANCE) and ds > self.level_downsamples[best]:
                best = level
        return best

    # ----- microns per pixel -----------------------------------------------------------
    def _set_metadata_mpp(self, mpp: float | None, source: str) -> None:
        if mpp is not None and (not math.isfinite(mpp) or mpp <= 0):
            mpp = None
        self.metadata_mpp = None if mpp is None else float(mpp)
        self.metadata_mpp_source = source if mpp is not None else "none"
        if self._mpp_override is None:
            self.mpp, self.mpp_source = self.metadata_mpp, self.metadata_mpp_source

    def apply_mpp_override(self, mpp: float) -> None:
        """Use the user's mpp instead of the file's (the file's value stays in `metadata_mpp`)."""
        try:
            value = float(mpp)
        except (TypeError, ValueError):
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise PipelineInputError(self.path, f"--mpp {mpp!r} is not a positive number of microns per pixel", MPP_FIX)
        self._mpp_override = value
        self.mpp, self.mpp_source = value, "override"

    # ----- pixel access ----------------------------------------------------------------
    def read_region(self, location: Sequence[int], level: int, size: Sequence[int]) -> np.ndarray:
        """uint8 (h, w, 3) RGB of `size` level pixels whose top-left is level-0 `location`.

        Parts outside the slide come back white.
        """
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        self._check_level(level)
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {(w, h)}")
        return self._read_at_checked(level, x, y, w, h)

    def read_scaled(self, x0: float, y0: float, out_w: int, out_h: int, scale: float) -> np.ndarray:
        """uint8 (out_h, out_w, 3); output pixel (i, j) covers level-0 [x0 + i*scale, x0 + (i+1)*scale) x (same in y).

        The mapping is exact (one float `scale` = level-0 px per output px, both axes), so callers
        can map output pixels back to level 0 without rounding drift. Reads from the coarsest
        level that is not coarser than `scale`, then resamples with Pillow: anti-aliased
        (bilinear with widened support) when shrinking, bicubic when enlarging.
        """
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        out_w, out_h = int(out_w), int(out_h)
        if out_w <= 0 or out_h <= 0:
            raise ValueError(f"output size must be positive, got {(out_w, out_h)}")
        level = self.best_level_for_downsample(scale)
        ds = self.level_downsamples[level]
        factor = scale / ds  # level px per output px
        lx0, ly0 = x0 / ds, y0 / ds  # requested origin in level px
        if abs(factor - 1.0) < 1e-9 and float(lx0).is_integer() and float(ly0).is_integer():
            loc_x, loc_y = self._location_for(level, int(lx0)), self._location_for(level, int(ly0))
            if self._origin_of(level, loc_x) == lx0 and self._origin_of(level, loc_y) == ly0:
                return self._read_at_checked(level, loc_x, loc_y, out_w, out_h)  # no resampling at all
        lx1, ly1 = lx0 + out_w * factor, ly0 + out_h * factor
        margin = int(math.ceil(2 * max(factor, 1.0))) + 1  # the resampling filter's support
        loc_x = self._location_for(level, math.floor(lx0) - margin)
        loc_y = self._location_for(level, math.floor(ly0) - margin)
        ox, oy = self._origin_of(level, loc_x), self._origin_of(level, loc_y)
        win_w, win_h = math.ceil(lx1 - ox) + margin, math.ceil(ly1 - oy) + margin
        partial = None
        try:
            window = self._read_at_checked(level, loc_x, loc_y, win_w, win_h)
        except UnreadableRegion as bad:  # a corrupt tile: resample what was read, then hand both on
            if bad.pixels is None:
                raise
            window, partial = bad.pixels, bad
        box = (lx0 - ox, ly0 - oy, lx1 - ox, ly1 - oy)
        resample = Image.Resampling.BILINEAR if factor >= 1 else Image.Resampling.BICUBIC
        resized = np.asarray(Image.fromarray(window).resize((out_w, out_h), resample=resample, box=box))
        if partial is not None:
            partial.pixels = resized
            raise partial
        return resized

    def read_at_mpp(self, x0: int, y0: int, w0: int, h0: int, target_mpp: float) -> tuple[np.ndarray, float]:
        """The level-0 box (x0, y0, w0, h0) at `target_mpp` um/px -> (rgb, scale).

        rgb is round(w0 * mpp / target_mpp) x round(h0 * ...) pixels; `scale` = target_mpp / mpp
        level-0 px per output px, exactly: output pixel (i, j) covers level-0
        [x0 + i*scale, x0 + (i+1)*scale) x [y0 + j*scale, ...), so its centre is at
        x0 + (i + 0.5) * scale (edge-based coordinates; a point u in the same convention maps
        to x0 + u * scale). The output may cover up to scale/2 px more or less than w0/h0 at
        the far edges because its size is rounded.
        """
        if not (target_mpp > 0 and math.isfinite(target_mpp)):
            raise ValueError(f"target_mpp must be a positive number, got {target_mpp!r}")
        if w0 <= 0 or h0 <= 0:
            raise ValueError(f"box size must be positive, got {(w0, h0)}")
        mpp = self.mpp
        if mpp is None:
            raise _missing_mpp_error(self)
        scale = target_mpp / mpp
        out_w, out_h = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        return self.read_scaled(x0, y0, out_w, out_h, scale), scale

    def read_downsampled(self, scale: float, max_window_pixels: int = 1 << 24) -> np.ndarray:
        """The whole slide at `scale` level-0 px per output px, ceil(W/scale) x ceil(H/scale).

        Read in horizontal bands so a flat 50k x 50k TIFF never has to sit in memory at once;
        the bands join seamlessly because each reads its own filter margin.
        """
        width, height = self.dimensions
        out_w, out_h = max(1, math.ceil(width / scale)), max(1, math.ceil(height / scale))
        factor = scale / self.level_downsamples[self.best_level_for_downsample(scale)]
        rows = max(1, int(max_window_pixels / max(1.0, out_w * factor * factor)))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            out[r0:r1] = self.read_tolerant(0.0, r0 * scale, out_w, r1 - r0, scale)
        return out

    def read_tolerant(self, x0: float, y0: float, out_w: int, out_h: int, scale: float) -> np.ndarray:
        """`read_scaled` for overviews (thumbnails, tissue, stains, pictures): blocks a decoder
        cannot read come back white and are added to `unreadable_seen` instead of failing."""
        try:
            return self.read_scaled(x0, y0, out_w, out_h, scale)
        except UnreadableRegion as bad:
            if bad.pixels is None:
                raise
            for region in bad.regions:
                if region not in self.unreadable_seen:
                    self.unreadable_seen.append(region)
            return bad.pixels

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole slide, longest side at most `max_side` (never enlarged)."""
        return self.read_downsampled(max(1.0, max(self.dimensions) / max(1, int(max_side))))

    def probe(self) -> None:
        """Read a few pixels at each level's first and last tile.

        Truncated files often open fine and only fail when their missing tiles are decoded;
        the last tile of a level is usually the last one written.
        """
        for level, (w, h) in enumerate(self.level_dimensions):
            if w <= 0 or h <= 0:
                raise PipelineInputError(self.path, f"level {level} has an empty size {w}x{h}", CORRUPT_FIX)
            for ix, iy in {(0, 0), (max(0, w - 16), max(0, h - 16))}:
                loc_x, loc_y = self._location_for(level, ix), self._location_for(level, iy)
                self._read_at_checked(level, loc_x, loc_y, min(16, w), min(16, h))

    # ----- backend hooks ----------------------------------------------------------------
    def _location_for(self, level: int, ix: int) -> int:
        """The level-0 coordinate at which a read of `level` starts at level pixel `ix`."""
        return math.ceil(ix * self.level_downsamples[level] - 1e-9)

    def _origin_of(self, level: int, loc: int) -> float:
        """The level-pixel coordinate where a read of `level` at level-0 `loc` starts."""
        return float(math.floor(loc / self.level_downsamples[level] + 1e-9))

    def _read_at(self, level: int, loc_x: int, loc_y: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) of `level` starting at level-0 (loc_x, loc_y); outside the level is white."""
        ix, iy = int(self._origin_of(level, loc_x)), int(self._origin_of(level, loc_y))
        return self._read_window(level, ix, iy, w, h)

    def _read_window(self, level: int, ix: int, iy: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) of level pixels [ix, ix+w) x [iy, iy+h); outside the level is white."""
        lw, lh = self.level_dimensions[level]
        cx0, cy0 = max(ix, 0), max(iy, 0)
        cx1, cy1 = min(ix + w, lw), min(iy + h, lh)
        if cx0 == ix and cy0 == iy and cx1 == ix + w and cy1 == iy + h:
            return to_rgb_uint8(self._read_inside(level, ix, iy, w, h), self.path)
        out = np.full((h, w, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            inside = to_rgb_uint8(self._read_inside(level, cx0, cy0, cx1 - cx0, cy1 - cy0), self.path)
            out[cy0 - iy : cy1 - iy, cx0 - ix : cx1 - ix] = inside
        return out

    def _read_inside(self, level: int, ix: int, iy: int, w: int, h: int) -> np.ndarray:
        """Raw pixels of a window that lies entirely inside the level (any dtype / channels)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _read_inside or _read_at")

    def _read_at_checked(self, level: int, loc_x: int, loc_y: int, w: int, h: int) -> np.ndarray:
        """`_read_at`, with decoder failures turned into a PipelineInputError naming the file."""
        try:
            return self._read_at(level, loc_x, loc_y, w, h)
        except (PipelineInputError, MemoryError):
            raise
        except Exception as exc:  # decoders raise anything from OSError to ValueError on bad data
            return self._read_in_blocks(level, loc_x, loc_y, w, h, exc)

    def _read_in_blocks(self, level: int, loc_x: int, loc_y: int, w: int, h: int, first: Exception) -> np.ndarray:
        """A failed read again, block by block on a grid fixed to the level (so overlapping reads
        name the same blocks): the readable blocks filled in, the others white and named in an
        `UnreadableRegion` that carries the pixels; returns them if every block reads after all."""
        ds = self.level_downsamples[level]
        ox, oy = self._origin_of(level, loc_x), self._origin_of(level, loc_y)
        out = np.full((h, w, 3), 255, np.uint8)
        bad: list[dict[str, Any]] = []
        width0, height0 = self.dimensions
        b = UNREADABLE_BLOCK
        for ky in range(math.floor(oy / b), math.floor((oy + h - 1) / b) + 1):
            y_a, y_b = max(0, round(ky * b - oy)), min(h, round((ky + 1) * b - oy))
            for kx in range(math.floor(ox / b), math.floor((ox + w - 1) / b) + 1):
                x_a, x_b = max(0, round(kx * b - ox)), min(w, round((kx + 1) * b - ox))
                if y_b <= y_a or x_b <= x_a:
                    continue
                try:
                    at_x, at_y = self._location_for(level, round(ox + x_a)), self._location_for(level, round(oy + y_a))
                    out[y_a:y_b, x_a:x_b] = self._read_at(level, at_x, at_y, x_b - x_a, y_b - y_a)
                except (PipelineInputError, MemoryError):
                    raise
                except Exception as exc:  # this block is unreadable
                    x0, y0 = max(0, round(kx * b * ds)), max(0, round(ky * b * ds))
                    x1, y1 = min(width0, round((kx + 1) * b * ds)), min(height0, round((ky + 1) * b * ds))
                    bad.append({"level": int(level), "box": [x0, y0, x1 - x0, y1 - y0], "error": _detail(exc)})
        if bad:
            raise UnreadableRegion(self.path, bad, out) from first
        return out

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")

    # ----- lifecycle and report ----------------------------------------------------------
    def close(self) -> None:
        """Release file handles; the reader is unusable afterwards."""

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # File handles cannot be pickled; worker processes (dask) re-open the same file instead.
        return (opened, (type(self), str(self.path), self._mpp_override))

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the slide for the run report."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [float(d) for d in self.level_downsamples],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "metadata_mpp": self.metadata_mpp,
            "metadata_mpp_source": self.metadata_mpp_source,
            "objective_power": self.objective_power,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} {self.dimensions} levels={self.level_count} mpp={self.mpp}>"


def _missing_mpp_error(reader: SlideReader) -> PipelineInputError:
    return PipelineInputError(reader.path, "the slide's metadata gives no microns per pixel", mpp_hint(reader.dimensions, reader.objective_power))


def mpp_hint(dimensions: tuple[int, int], objective_power: float | None = None) -> str:
    """How to find the true value, not only a guess: a wrong --mpp runs to the end at the
    wrong scale (0 nuclei, no error), so the hint gives two independent ways to get it."""
    width = int(dimensions[0])
    seen = f"this file says it was scanned at {objective_power:g}x, i.e. ~{10 / objective_power:.2g} um/px; " if objective_power else ""
    return (
        f"pass --mpp with the slide's true microns per pixel: {seen}the scanner's objective gives it (e.g. --mpp 0.25 for a 40x scan, "
        f"0.5 for 20x, 1.0 for 10x; the scan's own report or viewer gives the exact value), or measure: the section's width in mm x 1000 / "
        f"its width in pixels (this level-0 image is {width:,} px wide, so a section filling it at 15 mm would be {15000 / max(width, 1):.2g} um/px)"
    )


def opened(cls: type[SlideReader], path: str | Path, mpp_override: float | None = None) -> SlideReader:
    """A `cls` reader of `path`, probe-read (truncation shows here, not hours into a run),
    with the user's mpp applied; closed again if either fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        reader = cls(Path(path))
    try:
        reader.probe()
        if mpp_override is not None:
            reader.apply_mpp_override(mpp_override)
    except BaseException:
        reader.close()
        raise
    return reader
