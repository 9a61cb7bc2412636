"""The concrete readers behind `SlideReader`: OpenSlide, tifffile + zarr, Pillow, TIAToolbox.

Each one only translates its library's view of the file (levels, metadata, pixels) into the
shared interface; resampling, padding, RGB conversion and mpp checks live in `slides.py`.
Heavy libraries are imported inside the constructors so importing this module stays cheap.
"""
from __future__ import annotations

import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import PipelineInputError
from promptnucseg.models.interface import to_rgb_uint8
from .slide_reader import CORRUPT_FIX, SlideReader, mpp_from_resolution

NOT_AN_IMAGE_FIX = "check that you passed the slide or image file itself, and that it opens in an image viewer"


class OpenSlideReader(SlideReader):
    """Vendor pyramids (svs, ndpi, mrxs, scn, vms, bif, tiled TIFF) through OpenSlide.

    OpenSlide handles are thread-safe for read_region, so no lock is needed.
    """

    backend = "openslide"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise PipelineInputError(self.path, "OpenSlide does not recognise it as a slide (truncated, corrupt or not a slide)", CORRUPT_FIX) from exc
        except openslide.OpenSlideError as exc:
            raise PipelineInputError(self.path, f"OpenSlide cannot open it ({exc})", CORRUPT_FIX) from exc
        slide = self._slide
        self._reopen_lock = threading.Lock()
        self._retired: list[Any] = []
        self.level_dimensions = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in slide.level_downsamples)
        props = slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        self.objective_power = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        mpp = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
        if mpp is not None:
            self._set_metadata_mpp(mpp, "metadata: openslide.mpp-x")
        else:  # OpenSlide only derives mpp from TIFF resolution tags for some vendors
            xres = _float_or_none(props.get("tiff.XResolution"))
            unit = props.get("tiff.ResolutionUnit", "none")
            self._set_metadata_mpp(mpp_from_resolution(xres or 0.0, unit),
                                   f"tiff resolution tags (XResolution, unit {unit})")

    # OpenSlide maps a level-0 location to level coordinate loc / downsample and interpolates
    # when that is fractional (levels with downsample 2.0005 and the like); report it exactly.
    def _location_for(self, level: int, ix: int) -> int:
        return round(ix * self.level_downsamples[level])

    def _origin_of(self, level: int, loc: int) -> float:
        return loc / self.level_downsamples[level]

    def _read_at(self, level: int, loc_x: int, loc_y: int, w: int, h: int) -> np.ndarray:
        # OpenSlide pads outside the slide with transparent pixels; to_rgb_uint8 makes them white.
        import openslide

        handle = self._slide
        try:
            region = handle.read_region((loc_x, loc_y), level, (w, h))
        except openslide.OpenSlideError:
            # An OpenSlide handle stays failed after one bad tile, for every thread: the shared
            # handle is replaced, and this read is tried again on a handle of its own, which no
            # other thread's bad tile can break meanwhile, so only a really corrupt region fails.
            self._reopen(handle)
            private = openslide.OpenSlide(str(self.path))
            try:
                region = private.read_region((loc_x, loc_y), level, (w, h))
            finally:
                private.close()
        return to_rgb_uint8(np.asarray(region), self.path)

    def _reopen(self, failed: Any) -> None:
        import openslide

        with self._reopen_lock:
            if self._slide is failed:
                self._retired.append(failed)  # other threads may still hold it: closed with the reader
                self._slide = openslide.OpenSlide(str(self.path))

    def close(self) -> None:
        for handle in getattr(self, "_retired", []):
            handle.close()
        self._slide.close()


class TiffReader(SlideReader):
    """Generic, OME and flat TIFFs through tifffile: one zarr array per pyramid level, or a
    read-only memory map for uncompressed levels.

    tifffile's zarr store serialises seeks and reads on the file handle with a lock and
    decodes outside it, and memory maps are read-only, so concurrent reads are safe.
    """

    backend = "tifffile"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(str(self.path))
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types on bad files
            raise PipelineInputError(self.path, f"not a readable TIFF ({type(exc).__name__}: {exc})", NOT_AN_IMAGE_FIX) from exc
        try:
            self._open_levels(tifffile, zarr)
        except BaseException:
            self._tif.close()
            raise

    def _open_levels(self, tifffile: Any, zarr: Any) -> None:
        tif = self._tif
        if not tif.series or not tif.pages:
            raise PipelineInputError(self.path, "the TIFF holds no image", CORRUPT_FIX)
        series = tif.series[0]
        self._check_complete(series.levels)
        self._arrays: list[Any] = []
        self._axes: list[str] = []
        dims: list[tuple[int, int]] = []
        for index, level in enumerate(series.levels):
            axes = level.axes
            if level.keyframe.is_memmappable and len(level.pages) == 1:
                # Uncompressed and contiguous: map it, so a flat TIFF stored as one huge strip
                # is never decoded whole for a small read.
                array = tifffile.memmap(self.path, series=0, level=index, mode="r")
            else:
                array = zarr.open_array(series.aszarr(level=index), mode="r")
            if len(axes) != len(array.shape):
                raise PipelineInputError(self.path, f"unexpected TIFF layout (axes {axes}, shape {array.shape})", CORRUPT_FIX)
            if "Y" not in axes or "X" not in axes:
                raise PipelineInputError(self.path, f"the TIFF has no 2-D image plane (axes {axes})", NOT_AN_IMAGE_FIX)
            channels = _channel_count(axes, array.shape)
            if channels not in (1, 2, 3, 4):
                raise PipelineInputError(self.path, f"has {channels} channels; a brightfield RGB image is needed",
                                         "export an RGB (or grayscale) image of the slide")
            self._arrays.append(array)
            self._axes.append(axes)
            dims.append((int(array.shape[axes.index("X")]), int(array.shape[axes.index("Y")])))
        self.level_dimensions = tuple(dims)
        w0, h0 = dims[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in dims)
        self._read_metadata(tif, series.levels[0].keyframe)

    def _check_complete(self, levels: Any) -> None:
        """A truncated TIFF keeps its header but loses the tail: every strip/tile must fit in the file."""
        size = os.path.getsize(self.path)
        for level in levels:
            for page in level.pages:
                if page is None:
                    continue
                offsets = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
                if offsets.size and int((offsets + counts).max()) > size:
                    end = int((offsets + counts).max())
                    raise PipelineInputError(self.path, f"truncated: image data runs to byte {end} but the file has {size} bytes", CORRUPT_FIX)

    def _read_metadata(self, tif: Any, page: Any) -> None:
        self.vendor = "ome-tiff" if tif.is_ome else "aperio" if tif.is_svs else "ndpi" if tif.is_ndpi else "generic-tiff"
        mpp, source = None, "none"
        if tif.is_ome:
            mpp, self.objective_power = _ome_mpp_and_power(tif.ome_metadata or "")
            source = "ome: PhysicalSizeX"
        if mpp is None and tif.is_svs:
            desc = page.description or ""
            mpp, source = _float_or_none(_aperio_field(desc, "MPP")), "metadata: aperio MPP"
            self.objective_power = _float_or_none(_aperio_field(desc, "AppMag"))
        if mpp is None and "XResolution" in page.tags:  # absent tags would read as TIFF defaults (1 px/inch)
            unit = _RESOLUTION_UNITS.get(int(page.resolutionunit), "none")
            mpp = mpp_from_resolution(float(page.resolution[0]), unit)
            source = f"tiff resolution tags (XResolution, unit {unit})"
        self._set_metadata_mpp(mpp, source)

    def _read_inside(self, level: int, ix: int, iy: int, w: int, h: int) -> np.ndarray:
        axes = self._axes[level]
        channel_axis = "S" if "S" in axes else "C" if "C" in axes else None
        index = tuple(
            slice(iy, iy + h) if a == "Y" else slice(ix, ix + w) if a == "X" else slice(None) if a == channel_axis else 0
            for a in axes
        )
        kept = [a for a in axes if a in ("Y", "X") or a == channel_axis]
        pixels = np.asarray(self._arrays[level][index])
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(channel_axis)] if channel_axis else [])
        return np.transpose(pixels, order)

    def close(self) -> None:
        self._arrays = []
        self._tif.close()


class PillowReader(SlideReader):
    """PNG / JPEG through Pillow: the whole image is decoded once and kept in memory."""

    backend = "pillow"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        try:
            with Image.open(self.path) as img:
                img.load()
                self.vendor = (img.format or "image").lower()
                dpi = img.info.get("dpi")
                self._pixels = to_rgb_uint8(_pil_pixels(img), self.path)
        except Image.DecompressionBombError as exc:
            raise PipelineInputError(self.path, "too large to load as one PNG/JPEG",
                                     "convert it to a tiled pyramidal TIFF, e.g. vips tiffsave in.png out.tif --tile --pyramid") from exc
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError / truncated data
            raise PipelineInputError(self.path, f"not a readable image ({' '.join(str(exc).split())[:160]})", NOT_AN_IMAGE_FIX) from exc
        h, w = self._pixels.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        if dpi and float(dpi[0]) > 0:
            self._set_metadata_mpp(25400.0 / float(dpi[0]), f"{self.vendor} dpi ({float(dpi[0]):g})")

    def _read_inside(self, level: int, ix: int, iy: int, w: int, h: int) -> np.ndarray:
        return self._pixels[iy : iy + h, ix : ix + w]


class TiatoolboxReader(SlideReader):
    """Any format TIAToolbox's WSIReader opens (optional dependency).

    TIAToolbox readers are not documented as thread-safe, so reads are serialised.
    """

    backend = "tiatoolbox"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        try:
            from tiatoolbox.wsicore.wsireader import WSIReader
        except ImportError as exc:
            raise PipelineInputError(self.path, "the tiatoolbox backend needs the optional tiatoolbox package, which is not installed",
                                     "pip install promptnucseg[tiatoolbox], or use --backend auto") from exc
        try:
            self._wsi = WSIReader.open(str(self.path))
            info = self._wsi.info
        except Exception as exc:  # noqa: BLE001
            raise PipelineInputError(self.path, f"TIAToolbox cannot open it ({type(exc).__name__}: {exc})", CORRUPT_FIX) from exc
        self._lock = threading.Lock()
        self.level_dimensions = tuple((int(w), int(h)) for w, h in info.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in info.level_downsamples)
        self.vendor = str(info.vendor or "tiatoolbox")
        self.objective_power = _float_or_none(info.objective_power)
        mpp = None if info.mpp is None else _float_or_none(np.asarray(info.mpp).reshape(-1)[0])
        self._set_metadata_mpp(mpp, "metadata: tiatoolbox info.mpp")

    def _read_at(self, level: int, loc_x: int, loc_y: int, w: int, h: int) -> np.ndarray:
        # Like OpenSlide, TIAToolbox takes level-0 locations and sizes in level pixels.
        with self._lock:
            rgb = self._wsi.read_rect((loc_x, loc_y), (w, h), resolution=level, units="level",
                                      pad_mode="constant", pad_constant_values=255)
        return to_rgb_uint8(rgb, self.path)

    def _location_for(self, level: int, ix: int) -> int:
        return round(ix * self.level_downsamples[level])

    def _origin_of(self, level: int, loc: int) -> float:
        return loc / self.level_downsamples[level]


BACKEND_CLASSES: dict[str, type[SlideReader]] = {
    "openslide": OpenSlideReader,
    "tifffile": TiffReader,
    "pillow": PillowReader,
    "tiatoolbox": TiatoolboxReader,
}


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _channel_count(axes: str, shape: tuple[int, ...]) -> int:
    for name in ("S", "C"):
        if name in axes:
            return int(shape[axes.index(name)])
    return 1


def _aperio_field(description: str, name: str) -> str | None:
    match = re.search(rf"\|\s*{re.escape(name)}\s*=\s*([^|\r\n]+)", description)
    return match.group(1).strip() if match else None


_RESOLUTION_UNITS = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}  # TIFF ResolutionUnit
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp_and_power(xml: str) -> tuple[float | None, float | None]:
    """PhysicalSizeX (converted to um) of the first image, and its objective's magnification."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    mpp = power = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None and element.get("PhysicalSizeX"):
            factor = _OME_UNITS_UM.get(element.get("PhysicalSizeXUnit", "µm"))
            value = _float_or_none(element.get("PhysicalSizeX"))
            if factor is not None and value is not None:
                mpp = value * factor
        elif tag == "Objective" and power is None:
            power = _float_or_none(element.get("NominalMagnification"))
    return mpp, power


def _pil_pixels(img: Image.Image) -> np.ndarray:
    """Pillow image -> numpy pixels that `to_rgb_uint8` understands, bit depth kept."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA", "1", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return np.asarray(img)
    if mode == "I":  # 32-bit container; 16-bit PNGs decode to it on some Pillow versions
        pixels = np.asarray(img)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError("32-bit integer pixels outside 0..65535 are not supported")
        return pixels.astype(np.uint16)
    if mode in ("P", "PA", "RGBa", "La"):
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV
