"""Where the tissue is, at low resolution, so the tiler can skip empty glass.

Why: most of a slide is glass; segmenting it costs hours for nothing (tiatoolbox#433 reports
>8 h on one slide without a mask). The mask is deliberately generous (dilated, holes filled):
a tile wrongly skipped loses nuclei for good, a tile wrongly kept only costs time.

Method: HSV saturation (stain is coloured, glass is not) or darkness (pale and grayscale
tissue), each with an Otsu threshold clamped to a fixed band so that a blank slide gives an empty mask instead of
Otsu's split of noise, and an all-tissue crop is not halved; then small specks removed and
small holes filled. `parse_roi` (the user's level-0 region, defined in `slides`) is
re-exported here because the tiler needs both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from .slides import SlideReader, parse_roi

__all__ = ["TissueConfig", "TissueMask", "detect_tissue", "parse_roi", "tissue_mask"]


@dataclass(frozen=True)
class TissueConfig:
    """Thresholds of the tissue detector (feature values are 0..1)."""

    saturation_band: tuple[float, float] = (0.04, 0.15)  # clamp for Otsu: glass < 0.04 < ... < 0.15 < H&E
    darkness_band: tuple[float, float] = (0.08, 0.25)  # same for darkness (1 - mean of R, G, B)
    black_level: float = 0.15  # brightest channel below this: scanner border / black area, not tissue
    min_contrast: float = 0.05  # Otsu classes closer than this: the image is uniform
    min_object_um2: float = 2000.0  # ~45 x 45 um; smaller specks are dust
    min_object_fraction: float = 1e-4  # of the mask area, when the slide has no mpp
    max_speck_fraction: float = 1e-3  # an object this share of the mask is never dust, whatever the mpp says
    min_mask_side: int = 512  # the mask's long side at least this (or level 0's): a small fragment must cover pixels
    max_hole_factor: float = 10.0  # holes up to this many times min object are filled
    dilate_px: int = 1  # grow by this many mask pixels to keep faint tissue borders


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask; mask pixel (i, j) covers level-0 [j*downsample, (j+1)*downsample) in x, same in y."""

    array: np.ndarray
    downsample: float
    slide_dimensions: tuple[int, int]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.array.mean()) if self.array.size else 0.0

    @property
    def is_empty(self) -> bool:
        return not bool(self.array.any())

    def fraction_in(self, box: Sequence[float]) -> float:
        """Share of mask pixels touching the level-0 box (x, y, w, h) that are tissue.

        Mask pixels only partly inside the box count fully, which errs towards keeping tiles.
        """
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            return 0.0
        rows, cols = self.array.shape
        c0, r0 = max(0, math.floor(x / self.downsample)), max(0, math.floor(y / self.downsample))
        c1, r1 = min(cols, math.ceil((x + w) / self.downsample)), min(rows, math.ceil((y + h) / self.downsample))
        if c1 <= c0 or r1 <= r0:
            return 0.0
        return float(self.array[r0:r1, c0:c1].mean())

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for the run report."""
        return {
            "shape": list(self.array.shape),
            "downsample": self.downsample,
            "fraction": round(self.fraction, 6),
            **self.details,
        }


def tissue_mask(reader: SlideReader, mask_mpp: float = 8.0, max_side: int = 2048,
                config: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of the whole slide at ~`mask_mpp` um/px (or longest side `max_side` when
    the slide has no mpp); never finer than level 0, nor larger than `max_side`, nor smaller
    than `min_mask_side` (a small image told 0.25 um/px would otherwise be a 47 x 29 mask in
    which a biopsy fragment is 2 pixels, blurred into the glass)."""
    cfg = config or TissueConfig()
    width, height = reader.dimensions
    downsample = max(width, height) / max_side
    if reader.mpp is not None:
        downsample = max(downsample, mask_mpp / reader.mpp)
    downsample = max(1.0, min(downsample, max(width, height) / min(cfg.min_mask_side, max_side)))
    rgb = reader.read_downsampled(downsample)
    area = rgb.shape[0] * rgb.shape[1]
    mask_mpp_actual = None if reader.mpp is None else reader.mpp * downsample
    if mask_mpp_actual is not None:
        physical = max(1, round(cfg.min_object_um2 / mask_mpp_actual**2))
    else:
        physical = max(1, round(cfg.min_object_fraction * area))
    # a wrong (or a thumbnail's) mpp makes a visible fragment "dust-sized": the share of the image caps the rule
    min_object = min(physical, max(1, round(cfg.max_speck_fraction * area)))
    array, details = detect_tissue(rgb, min_object, cfg, max_hole_px=int(cfg.max_hole_factor * physical))
    details = {"mask_mpp": mask_mpp_actual, "min_object_px": min_object, **details}
    return TissueMask(array, downsample, (width, height), details)


def detect_tissue(rgb: np.ndarray, min_object_px: int, cfg: TissueConfig | None = None,
                  max_hole_px: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue pixels of a low-resolution uint8 RGB image -> (bool mask, thresholds used);
    objects under `min_object_px` dropped, holes up to `max_hole_px` (default
    `max_hole_factor` x `min_object_px`) filled.

    Saturation finds stained tissue; darkness adds pale or colourless tissue (and grayscale
    scans) that saturation misses. Near-black pixels (scanner borders) never count as tissue.
    """
    cfg = cfg or TissueConfig()
    pixels = rgb.astype(np.float32) / 255.0
    saturation = ndimage.gaussian_filter(rgb2hsv(pixels)[..., 1], sigma=1.0)
    darkness = ndimage.gaussian_filter(1.0 - pixels.mean(axis=2), sigma=1.0)
    sat_mask, sat_info = _feature_mask(saturation, cfg.saturation_band, cfg.min_contrast)
    dark_mask, dark_info = _feature_mask(darkness, cfg.darkness_band, cfg.min_contrast)
    near_black = ndimage.gaussian_filter(pixels.max(axis=2), sigma=1.0) < cfg.black_level
    mask = (sat_mask | dark_mask) & ~near_black
    if sat_info.get("threshold") is not None or dark_info.get("threshold") is not None:  # a real split: clean it
        mask = _drop_small(mask, min_object_px)
        holes = int(cfg.max_hole_factor * min_object_px) if max_hole_px is None else max_hole_px
        mask = ~_drop_small(~mask, holes)
        if cfg.dilate_px > 0 and mask.any():
            mask = ndimage.binary_dilation(mask, iterations=cfg.dilate_px) & ~near_black
    details = {"saturation": sat_info, "darkness": dark_info, "near_black_fraction": round(float(near_black.mean()), 6)}
    return mask, details


def _feature_mask(values: np.ndarray, band: tuple[float, float], min_contrast: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Otsu on one feature, clamped to `band`; a single population is all tissue or all glass."""
    low, high = band
    otsu = _otsu(values)
    if otsu is None or _class_contrast(values, otsu) < min_contrast:
        uniform_tissue = float(np.median(values)) >= (low + high) / 2
        info = {"otsu": otsu, "threshold": None, "uniform": "tissue" if uniform_tissue else "background"}
        return np.full(values.shape, uniform_tissue), info
    threshold = float(min(max(otsu, low), high))
    return values > threshold, {"otsu": otsu, "threshold": threshold}


def _otsu(values: np.ndarray) -> float | None:
    if values.size < 2 or float(values.max() - values.min()) < 1e-6:
        return None
    return float(threshold_otsu(values))


def _class_contrast(values: np.ndarray, threshold: float) -> float:
    low, high = values[values <= threshold], values[values > threshold]
    if not low.size or not high.size:
        return 0.0
    return float(high.mean() - low.mean())


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Remove 8-connected components smaller than `min_px` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
