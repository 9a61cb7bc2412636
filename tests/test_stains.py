"""Colour deconvolution (stains.py) against scikit-image's Ruifrok-Johnston `rgb2hed`, on
synthetic patches of known stain amounts, and on real nuclei (the suite's own labelled H&E
fixture) and the real sample slide (skipped, with the reason, where it is not cached)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed

from promptnucseg.wsi_pipeline.morphometrics import measure_mask
from promptnucseg.wsi_pipeline.stains import RJ_DAB, RJ_EOSIN, RJ_HEMATOXYLIN, StainModel, fit_stains, macenko_vectors
from promptnucseg.wsi_pipeline.tissue import detect_tissue
from conftest import HE_EOSIN, he_labels, sample_slide_or_skip

H_TRUE, E_TRUE = np.array([0.58, 0.72, 0.38]), np.array([0.20, 0.93, 0.30])  # a slide's own (not RJ's) vectors
WHITE = np.array([244.0, 240.0, 242.0])


def _he(image: Path = HE_EOSIN) -> tuple[np.ndarray, np.ndarray]:
    """A real H&E image of the suite's own (pink eosin, a red vessel) and its nuclei."""
    return np.asarray(Image.open(image).convert("RGB")), tifffile.imread(he_labels(image))


def _compose(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Beer-Lambert: stain amounts -> uint8 RGB under the slide's vectors and white."""
    od = h[..., None] * (H_TRUE / np.linalg.norm(H_TRUE)) + e[..., None] * (E_TRUE / np.linalg.norm(E_TRUE))
    return np.clip(np.round(WHITE * 10.0 ** -od), 0, 255).astype(np.uint8)


def test_three_stain_reference_matches_skimage_rgb2hed_on_a_real_patch():
    rgb, _ = _he()
    patch = np.maximum(rgb[:128, :128], 1)  # rgb2hed reads 0 as 1e-6, we read it as 1: keep 0 out
    ours = StainModel(hematoxylin=RJ_HEMATOXYLIN, eosin=RJ_EOSIN, third=RJ_DAB).amounts(patch)
    ref = rgb2hed(patch)[..., :2]  # log(I)/log(1e-6) = OD / 6, clipped at 0
    assert np.allclose(np.maximum(ours / 6.0, 0), ref, atol=1e-6)


def test_known_stain_amounts_come_back_with_the_slides_vectors_and_white():
    rng = np.random.default_rng(0)
    h, e = rng.uniform(0, 1.0, (64, 64)), rng.uniform(0, 0.6, (64, 64))  # OD <= 1.6: 8-bit steps stay < 0.04 OD
    rgb = _compose(h, e)
    model = StainModel(tuple(WHITE), tuple(H_TRUE / np.linalg.norm(H_TRUE)), tuple(E_TRUE / np.linalg.norm(E_TRUE)))
    got = model.amounts(rgb)
    assert np.abs(got[..., 0] - h).max() < 0.04 and np.abs(got[..., 1] - e).max() < 0.04  # 8-bit rounding only
    assert np.abs(model.amounts(WHITE.astype(np.uint8))).max() < 1e-9  # glass: no stain


def test_macenko_finds_the_vectors_and_fit_stains_the_white_of_a_synthetic_slide():
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 1.2, (96, 96)) * (rng.random((96, 96)) < 0.5)
    e = rng.uniform(0.1, 0.8, (96, 96)) * (h == 0)  # pure-stain pixels: Macenko's extremes
    tissue_rgb = _compose(h + 0.05 * e, e + 0.05 * h)
    thumb = np.concatenate([tissue_rgb, np.broadcast_to(WHITE.astype(np.uint8), (96, 96, 3))], axis=1)
    tissue = np.concatenate([np.ones((96, 96), bool), np.zeros((96, 96), bool)], axis=1)
    model = fit_stains(thumb, tissue, [tissue_rgb])
    assert model.source.startswith("slide (Macenko)")
    assert model.white == pytest.approx(tuple(WHITE))
    for got, true in ((model.hematoxylin, H_TRUE), (model.eosin, E_TRUE)):
        cos = np.dot(got, true) / np.linalg.norm(got) / np.linalg.norm(true)
        assert np.degrees(np.arccos(min(cos, 1.0))) < 5.0
    assert macenko_vectors(np.zeros((10, 3))) is None  # too few stained pixels: no estimate


def test_real_nuclei_read_plausible_h_and_e_with_more_haematoxylin_than_stroma():
    rgb, labels = _he()
    tissue, _ = detect_tissue(rgb, 100)
    model = fit_stains(rgb, tissue, [rgb[:512, :512]])
    amounts = model.amounts(rgb)
    nuclei = labels > 0
    stroma = ndimage.binary_dilation(nuclei, iterations=8) & ~ndimage.binary_dilation(nuclei, iterations=3)
    ids = np.unique(labels[nuclei])[:200]
    per = np.array([amounts[labels == i].mean(axis=0) for i in ids])
    assert np.median(per[:, 0]) > 1.5 * np.median(amounts[stroma, 0])  # haematoxylin marks nuclei
    assert np.percentile(per[:, 0], 5) > 0.1 and np.percentile(per[:, 0], 95) < 2.5
    assert np.percentile(per[:, 1], 5) > -0.05 and np.percentile(per[:, 1], 95) < 1.5  # eosin: not negative
    assert (per[:, 1] < 0).mean() < 0.05
    first = int(np.unique(labels[:200, :200][labels[:200, :200] > 0])[0])
    one = measure_mask(labels[:200, :200] == first, 0.25, rgb[:200, :200], model)  # the measuring path agrees
    assert one["hematoxylin_od_mean"] == pytest.approx(float(amounts[:200, :200][labels[:200, :200] == first, 0].mean()), abs=0.05)


def test_sample_slide_stains_are_fitted_from_the_slide():
    cmu = sample_slide_or_skip()
    from promptnucseg.models.interface import ModelFacts, Palette
    from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
    from promptnucseg.wsi_pipeline.slides import open_slide

    with open_slide(cmu) as reader:
        plan = plan_slide(reader, SegmentSettings(roi=(600, 800, 512, 512), tile_size=512, overlap=64), ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True))
    stains = plan.stains
    assert stains.source.startswith("slide (Macenko), white from the slide's glass")
    assert stains.white == pytest.approx((246, 243, 243), abs=3)
