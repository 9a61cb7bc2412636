"""Random training crops and the targets each network learns from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..data.datasets import NucleusSample, instance_points
from .augment import AugmentConfig, augment, draw_scale, rescaled_window


@dataclass
class Crop:
    image: np.ndarray  # uint8 (S, S, 3)
    instances: np.ndarray  # int32 (S, S)
    ids: np.ndarray  # (N,) instance ids present
    centroids: np.ndarray  # (N, 2) float32 (x, y)
    classes: np.ndarray  # (N,) int64, 0-based


def random_crop(sample: NucleusSample, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window (padded with white / background when the image is smaller)."""
    h, w = sample.instances.shape
    y0 = int(rng.integers(0, max(h - size, 0) + 1))
    x0 = int(rng.integers(0, max(w - size, 0) + 1))
    img = sample.image[y0 : y0 + size, x0 : x0 + size]
    inst = sample.instances[y0 : y0 + size, x0 : x0 + size]
    if img.shape[:2] != (size, size):
        ph, pw = size - img.shape[0], size - img.shape[1]
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=255)
        inst = np.pad(inst, ((0, ph), (0, pw)))
    return img, inst


def make_crop(sample: NucleusSample, size: int, rng: np.random.Generator, aug: AugmentConfig | None) -> Crop:
    scale = draw_scale(rng, aug) if aug is not None else 1.0
    if scale == 1.0:
        img, inst = random_crop(sample, size, rng)
    else:  # a window of size/scale px shown at size px: nuclei look `scale` times larger
        img, inst = rescaled_window(*random_crop(sample, max(int(round(size / scale)), 8), rng), size)
    if aug is not None:
        img, inst = augment(img, inst, rng, aug)
    ids, centroids = instance_points(inst)
    classes = np.array([(sample.instance_classes or {}).get(int(i), 0) for i in ids], np.int64)
    return Crop(img, np.ascontiguousarray(inst, dtype=np.int32), ids, centroids, classes)


def interior_points(instances: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random pixel (x, y) inside each instance of `ids`."""
    flat = instances.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    starts = np.searchsorted(sorted_ids, ids, side="left")
    ends = np.searchsorted(sorted_ids, ids, side="right")
    picks = order[starts + (rng.random(len(ids)) * (ends - starts)).astype(np.int64)]
    ys, xs = np.divmod(picks, instances.shape[1])
    return np.stack([xs, ys], axis=1).astype(np.float32)


def sample_nuclei(crop: Crop, count: int, rng: np.random.Generator, min_area: int = 10) -> np.ndarray:
    """Indices (into crop.ids) of up to `count` nuclei big enough to learn from."""
    if len(crop.ids) == 0:
        return np.zeros(0, np.int64)
    areas = ndimage.sum_labels(np.ones_like(crop.instances), crop.instances, crop.ids)
    candidates = np.flatnonzero(areas >= min_area)
    if len(candidates) > count:
        candidates = rng.choice(candidates, size=count, replace=False)
    return np.sort(candidates)
