"""Colour deconvolution fitted to the slide: its white level and, where it fits, its H&E vectors.

Why: fixed stain vectors and a white of 255 made "Eosin OD mean" negative for 16.8% of the
sample slide's nuclei. Two causes, both fixed here:
- skimage's `hed_from_rgb` is a *three*-stain (H, E, DAB) inverse; on an H&E slide, which holds
  no DAB, blue absorbance that neither H nor E explains is pushed into DAB and bends H and E
  (Ruifrok & Johnston 2001 use a residual third vector, orthogonal to H and E, for two stains);
- the slide's stains are not the reference ones: Macenko et al. (ISBI 2009) read the two vectors
  off the slide's own optical densities (the plane of largest variance, then the extreme
  angles in it), which is what we do when the estimate passes sanity checks.

Units: optical density OD = -log10(I / I_white) per channel, dimensionless, with I_white the
slide's background (glass) intensity per channel; a stain amount is the OD its unit vector would
carry, so 1.0 means that stain alone absorbs 90% of the light. Values are not clipped at 0:
means stay unbiased, and a mean near or below 0 says "no such stain here", not an error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

# Ruifrok-Johnston H&E vectors (skimage's rgb_from_hed rows 0 and 1, as published)
RJ_HEMATOXYLIN = (0.65, 0.70, 0.29)
RJ_EOSIN = (0.07, 0.99, 0.11)
RJ_DAB = (0.27, 0.57, 0.78)

MACENKO_MIN_OD = 0.15  # Macenko's beta: fainter pixels are glass or noise
MACENKO_PERCENTILE = 1.0  # Macenko's alpha: robust extreme angles
MACENKO_MIN_PIXELS = 2000  # fewer stained pixels: keep the reference vectors
MAX_ANGLE_FROM_REFERENCE = 35.0  # degrees; further off, the estimate has mixed up the stains
MIN_ANGLE_BETWEEN_STAINS = 10.0  # degrees; closer, the two stains are not separable
MIN_GLASS_FRACTION = 0.005  # of thumbnail pixels, to trust the background estimate
WHITE_RANGE = (160.0, 255.0)  # a "white" darker than 160/255 is not glass


@dataclass(frozen=True)
class StainModel:
    """Background intensity per channel and the stain vectors (OD per unit stain, RGB)."""

    white: tuple[float, float, float] = (255.0, 255.0, 255.0)
    hematoxylin: tuple[float, float, float] = RJ_HEMATOXYLIN
    eosin: tuple[float, float, float] = RJ_EOSIN
    third: tuple[float, float, float] | None = None  # None: the residual H x E (H&E slides)
    source: str = "reference (Ruifrok-Johnston), white 255"

    def od_to_stains(self) -> np.ndarray:
        """(3, 2) matrix: OD (r, g, b) row vector @ it -> (H, E) amounts."""
        return _inverse(self.hematoxylin, self.eosin, self.third)

    def table(self) -> np.ndarray:
        """table[v, c, s]: what 8-bit intensity v in channel c adds to stain s (three lookups
        per stain replace a per-pixel log and matrix product)."""
        return _table(self.white, self.hematoxylin, self.eosin, self.third)

    def amounts(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 RGB -> (..., 2) haematoxylin and eosin amounts (OD)."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:
            raise ValueError(f"stain amounts need uint8 RGB, got {rgb.dtype}")
        t = self.table()
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        return np.stack([t[r, 0, s] + t[g, 1, s] + t[b, 2, s] for s in (0, 1)], axis=-1)

    def describe(self) -> dict[str, Any]:
        return {k: (list(np.round(v, 4)) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@lru_cache(maxsize=64)
def _inverse(h: tuple, e: tuple, third: tuple | None) -> np.ndarray:
    hv, ev = np.asarray(h, np.float64), np.asarray(e, np.float64)
    if third is None:
        rv = np.cross(hv, ev)
        rv /= np.linalg.norm(rv)
    else:
        rv = np.asarray(third, np.float64)
    return np.linalg.inv(np.stack([hv, ev, rv]))[:, :2]


@lru_cache(maxsize=64)
def _table(white: tuple, h: tuple, e: tuple, third: tuple | None) -> np.ndarray:
    od = od_lut(white)  # (256, 3)
    m = _inverse(h, e, third)  # (3, 2)
    return np.ascontiguousarray(od[:, :, None] * m[None, :, :])


def od_lut(white: Sequence[float]) -> np.ndarray:
    """(256, 3) optical density of each 8-bit value per channel; 0 is read as 1 (OD finite)."""
    v = np.maximum(np.arange(256, dtype=np.float64), 1.0)[:, None]
    return -np.log10(v / np.asarray(white, np.float64)[None, :])


def estimate_white(thumb: np.ndarray, tissue: np.ndarray) -> tuple[float, float, float] | None:
    """Per-channel median of the glass (non-tissue, not near-black) thumbnail pixels, or None
    when the thumbnail shows too little glass to tell (an all-tissue crop)."""
    rgb = np.asarray(thumb)[..., :3].reshape(-1, 3)
    glass = ~np.asarray(tissue, bool).reshape(-1) & (rgb.max(axis=1) >= WHITE_RANGE[0])
    if glass.sum() < max(50, MIN_GLASS_FRACTION * len(rgb)):
        return None
    white = np.clip(np.median(rgb[glass].astype(np.float64), axis=0), *WHITE_RANGE)
    return (float(white[0]), float(white[1]), float(white[2]))


def macenko_vectors(od: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Macenko's H and E unit vectors from (N, 3) optical densities, or None when too few
    pixels are stained. H is the one absorbing more red (haematoxylin is blue-purple)."""
    od = np.asarray(od, np.float64).reshape(-1, 3)
    od = od[(od > MACENKO_MIN_OD).all(axis=1)]
    if len(od) < MACENKO_MIN_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into the positive octant
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [MACENKO_PERCENTILE, 100 - MACENKO_PERCENTILE])
    v1, v2 = plane @ [np.cos(lo), np.sin(lo)], plane @ [np.cos(hi), np.sin(hi)]
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    return h / np.linalg.norm(h), e / np.linalg.norm(e)


def _angle(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def fit_stains(thumb: np.ndarray, tissue: np.ndarray, patches: Sequence[np.ndarray]) -> StainModel:
    """The slide's StainModel: white from the thumbnail's glass, vectors by Macenko on
    full-resolution tissue `patches` (uint8 RGB) when the estimate is sane, else the reference."""
    white = estimate_white(thumb, tissue)
    white_note = "white 255 (too little glass to measure)" if white is None else "white from the slide's glass"
    white = white or (255.0, 255.0, 255.0)
    lut = od_lut(white)
    ods = [np.stack([lut[p[..., c].ravel(), c] for c in range(3)], axis=1) for p in patches if np.asarray(p).size]
    found = macenko_vectors(np.concatenate(ods)) if ods else None
    if found is not None:
        h, e = found
        sane = (
            _angle(h, RJ_HEMATOXYLIN) <= MAX_ANGLE_FROM_REFERENCE and _angle(e, RJ_EOSIN) <= MAX_ANGLE_FROM_REFERENCE
            and _angle(h, e) >= MIN_ANGLE_BETWEEN_STAINS and (h > 0).all() and (e > 0).all()
        )
        if sane:
            return StainModel(white, tuple(float(v) for v in h), tuple(float(v) for v in e), None, f"slide (Macenko), {white_note}")
    return StainModel(white, source=f"reference (Ruifrok-Johnston; Macenko estimate {'unsafe' if found is not None else 'impossible: too few stained pixels'}), {white_note}")
