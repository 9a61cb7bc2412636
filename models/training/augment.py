"""The paper's augmentation families for H&E crops: flips/rot90, colour, blur, noise.

Geometric transforms move the instance map with the image; photometric ones touch only
the image. Everything draws from one numpy Generator so runs are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.color import hsv2rgb, rgb2hsv


@dataclass
class AugmentConfig:
    flip_rot: bool = True
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.04
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_prob: float = 0.2
    noise_std: float = 6.0


def geometric(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 dihedral transforms, applied to image and label alike."""
    k = int(rng.integers(4))
    image, instances = np.rot90(image, k), np.rot90(instances, k)
    if rng.random() < 0.5:
        image, instances = image[:, ::-1], instances[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(instances)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
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
