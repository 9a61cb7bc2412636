"""The paper's augmentation families for H&E crops: flips/rot90, colour, blur, noise;
and two of ours, off by default: stain jitter in HED space and scale jitter.

Geometric transforms move the instance map with the image; photometric ones touch only
the image. Everything draws from one numpy Generator so runs are reproducible. Stain
jitter (Tellez et al. 2018) scales and shifts each stain's optical density
(Ruifrok-Johnston deconvolution), so a crop looks like the same tissue stained or scanned
elsewhere; scale jitter resamples a crop by 0.8-1.25x, as nuclei differ in size between
scanners and organs more than flips and colour can teach.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

from ..config import AugmentConfig

__all__ = ["AugmentConfig", "augment", "draw_scale", "rescaled_window", "stain_jitter"]


def geometric(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 dihedral transforms, applied to image and label alike."""
    k = int(rng.integers(4))
    image, instances = np.rot90(image, k), np.rot90(instances, k)
    if rng.random() < 0.5:
        image, instances = image[:, ::-1], instances[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(instances)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Each of haematoxylin, eosin and the residual: OD * U(1-s, 1+s) + U(-s, s)."""
    hed = rgb2hed(image)
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-sigma, sigma, 3)
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


def rescaled_window(image: np.ndarray, instances: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A crop resampled to size x size: image bilinear, instance ids nearest."""
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    inst = np.asarray(Image.fromarray(instances.astype(np.int32)).resize((size, size), Image.NEAREST))
    return img, inst


def draw_scale(rng: np.random.Generator, cfg: AugmentConfig) -> float:
    lo, hi = cfg.scale_range
    return 1.0 if lo == hi == 1.0 else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if cfg.hed_jitter:
        image = stain_jitter(image, rng, cfg.hed_jitter)
    img = image.astype(np.float32) / 255.0
    if cfg.hue or cfg.saturation:
        hsv = rgb2hsv(img)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue)) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation), 0, 1)
        img = hsv2rgb(hsv).astype(np.float32)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    img = img + rng.uniform(-cfg.brightness, cfg.brightness)
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        img = gaussian_filter(img, sigma=(sigma, sigma, 0))
    if rng.random() < cfg.noise_prob:
        img = img + rng.normal(0, cfg.noise_std / 255.0, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def augment(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.flip_rot:
        image, instances = geometric(image, instances, rng)
    return photometric(image, rng, cfg), instances
