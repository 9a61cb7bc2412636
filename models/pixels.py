"""The one pixel rule: any image array -> the (H, W, 3) uint8 RGB the networks take.

Training images (`data/formats.py`, `data/datasets.py`) and slide tiles
(`wsi_pipeline/slides.py`, through `interface.py`) both come through here, so one file
reaches the model alike whichever way it is opened. The rule depends on the dtype only,
never on an image's own values, so two tiles of one slide are never scaled differently:

- uint8 as is; bool as 0/255;
- uint16 over its full range (65535 -> 255, i.e. /257): 16-bit scanners and TIFFs;
- other integer types (int32, int64 from numpy or MATLAB pipelines) must hold 0..255;
- floats lie in 0..`float_max` (1 by default; a format that stores 0..255 floats, such as
  PanNuke's images.npy, says so), NaN/inf refused;
- alpha is laid on white, the colour of empty glass (OpenSlide pads outside the slide with
  transparent pixels); an opaque alpha changes nothing;
- gray is repeated into three channels; planar (C, H, W) arrays are moved to (H, W, C).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def to_rgb_uint8(pixels: np.ndarray, source: str | Path = "pixels", *, float_max: float = 1.0) -> np.ndarray:
    """Contiguous (H, W, 3) uint8 RGB from (H, W), (H, W, 1-4) or planar (3|4, H, W) pixels;
    `source` names the file in errors. An empty window (a read of no pixels) stays empty."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # planar (C, H, W) TIFF
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{source}: not an image (array shape {tuple(a.shape)}; expected (H, W) or (H, W, 1-4)). Fix: save it as RGB PNG/JPEG/TIFF")
    a = _scale_to_uint8(a, source, float_max)
    channels = a.shape[2]
    if channels in (2, 4):  # gray+alpha or RGBA
        a = _composite_on_white(a[:, :, : channels - 1], a[:, :, channels - 1 :])
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _scale_to_uint8(a: np.ndarray, source: str | Path, float_max: float) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return (a.astype(np.float64) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{source}: {a.dtype} pixels must hold 0..255 (8-bit values), found {lo}..{hi}. Fix: save it as 8- or 16-bit (uint8/uint16) RGB")
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: image holds NaN/inf pixels. Fix: re-export the image")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-6 * float_max or hi > (1 + 1e-6) * float_max:
            raise ValueError(f"{source}: floating-point pixels must lie in 0..{float_max:g}, found {lo:g}..{hi:g}. Fix: save it as 8- or 16-bit RGB")
        return (np.clip(a, 0, float_max) * (255.0 / float_max) + 0.5).astype(np.uint8)
    raise ValueError(f"{source}: unsupported pixel type {a.dtype}. Fix: save it as 8- or 16-bit RGB")


def _composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if alpha.min() == 255:
        return color
    c = color.astype(np.uint32)
    al = alpha.astype(np.uint32)
    return ((c * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)
