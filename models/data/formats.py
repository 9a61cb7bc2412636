"""Pixel-level readers shared by the dataset formats: images to uint8 RGB, labels to int32.

Kept apart from the dataset classes so each on-disk format is a few lines of layout logic
on top of one set of conversions (and one place that decides what "RGB" means).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def to_rgb_uint8(arr: np.ndarray, source: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from grayscale, gray+alpha, RGB, RGBA, 16-bit or float pixels.

    Alpha is dropped (slides have none that means anything); 16-bit is scaled by 1/257
    (65535 -> 255); float in [0, 1] is scaled by 255, other float is taken as 0..255
    (PanNuke stores float64 0..255) and clipped.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # planar (C, H, W) TIFF
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.size == 0:
        raise ValueError(f"{source}: not an image (array shape {tuple(a.shape)}). Fix: save it as RGB PNG/JPEG/TIFF")
    channels = a.shape[2]
    if channels in (1, 2):  # gray or gray + alpha
        a = np.repeat(a[..., :1], 3, axis=2)
    elif channels == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: image holds NaN/inf pixels. Fix: re-export the image")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) < 0:
            raise ValueError(f"{source}: image holds negative pixels (dtype {a.dtype}). Fix: save it as uint8 RGB")
        if a.dtype.itemsize == 1 or a.max(initial=0) <= 255:
            return a.astype(np.uint8)
        if a.max(initial=0) <= 65535:
            return np.rint(a / 257.0).astype(np.uint8)
    raise ValueError(f"{source}: unsupported pixel type {a.dtype}. Fix: save it as 8- or 16-bit RGB")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB; TIFF through tifffile (handles 16-bit/planar), the rest through PIL."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}). Fix: re-export it as PNG/JPEG/TIFF") from err
    return to_rgb_uint8(arr, path)
