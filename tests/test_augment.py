"""Training augmentation: the stain and scale jitters move what they should and nothing else."""
import numpy as np
import pytest
from skimage.color import rgb2hed

from promptnucseg.models.config import AugmentConfig, TrainConfig
from promptnucseg.models.data.datasets import NucleusSample
from promptnucseg.models.training.augment import draw_scale, rescaled_window, stain_jitter
from promptnucseg.models.training.sampling import make_crop


def _he_like(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Pink stroma with purple discs: an H&E-coloured test image."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (225, 150, 190)
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in rng.integers(8, size - 8, (6, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = (90, 50, 140)
    return img


def test_stain_jitter_scales_each_stain_and_keeps_the_picture():
    rng = np.random.default_rng(0)
    img = _he_like(rng)
    same = stain_jitter(img, np.random.default_rng(1), 0.0)
    assert np.abs(same.astype(int) - img).max() <= 1  # sigma 0: the deconvolution round trip only
    out = stain_jitter(img, np.random.default_rng(1), 0.1)
    assert out.shape == img.shape and out.dtype == np.uint8
    before, after = rgb2hed(img), rgb2hed(out)
    nucleus = (img == (90, 50, 140)).all(-1)
    # haematoxylin stays higher in the nuclei than around them, whatever the jitter drew
    assert after[nucleus, 0].mean() > after[~nucleus, 0].mean()
    assert not np.allclose(before, after, atol=1e-3)


def test_scale_jitter_resizes_nuclei_and_is_off_by_default():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert draw_scale(rng, AugmentConfig()) == 1.0 and rng.bit_generator.state == state  # no draw: earlier runs replay exactly
    scales = [draw_scale(rng, AugmentConfig(scale_range=(0.8, 1.25))) for _ in range(200)]
    assert 0.8 <= min(scales) and max(scales) <= 1.25 and np.median(scales) == pytest.approx(1.0, abs=0.08)
    inst = np.zeros((40, 40), np.int32)
    inst[10:20, 10:20] = 7
    img = np.zeros((40, 40, 3), np.uint8)
    big_img, big = rescaled_window(img, inst, 50)
    assert set(np.unique(big)) == {0, 7}  # ids are never blended
    assert (big == 7).sum() / (inst == 7).sum() == pytest.approx(1.25**2, rel=0.1)


def test_crops_with_scale_jitter_keep_their_size_and_labels():
    rng = np.random.default_rng(3)
    inst = np.zeros((300, 300), np.int32)
    for i, (y, x) in enumerate(rng.integers(20, 280, (30, 2)), start=1):
        inst[y - 4 : y + 4, x - 4 : x + 4] = i
    sample = NucleusSample(name="s", image=_he_like(rng, 300), instances=inst, instance_classes=None)
    aug = AugmentConfig(scale_range=(0.8, 1.25), hed_jitter=0.05)
    crop = make_crop(sample, 128, rng, aug)
    assert crop.image.shape == (128, 128, 3) and crop.instances.shape == (128, 128)
    assert set(np.unique(crop.instances)) - {0} <= set(range(1, 31))
    assert TrainConfig().augment == AugmentConfig()  # configs that say nothing keep the release's families
