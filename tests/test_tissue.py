"""Tissue masks on real slides and images, on blank glass, and the level-0 ROI parser."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.slides import open_slide
from promptnucseg.wsi_pipeline.tissue import TissueMask, parse_roi, tissue_mask
from conftest import HE_EOSIN, HE_GLANDS, SHARED_DATA, sample_slide_or_skip

SLIDES = SHARED_DATA / "slides"
KUMAR = SHARED_DATA / "kumar" / "train" / "images"

needs_data = pytest.mark.skipif(not SLIDES.is_dir(), reason="needs the real slides of the shared data (../shared/data)")


@pytest.mark.parametrize(
    "name, override, low, high",
    [  # measured: 0.391, 0.630, 0.661, 0.0035, 0.0039 (the kidney slide is one small fragment on glass)
        ("cmu_small_region.svs", None, 0.30, 0.55),  # the sample slide: shared data or the user cache
        pytest.param("tcga-cr-7395-01a-01-ts1.svs", None, 0.50, 0.75, marks=needs_data),
        pytest.param("tcga-cr-7395-01a-01-ts1.svs", 0.25, 0.55, 0.80, marks=needs_data),
        pytest.param("kidney-48-5.tif", None, 0.001, 0.01, marks=needs_data),
        # told 0.25 um/px, the 1493-px image was a 47 x 29 px mask at 8 um/px and the fragment 2 px: "no tissue"
        pytest.param("kidney-48-5.tif", 0.25, 0.001, 0.01, marks=needs_data),
    ],
)
def test_real_slides_have_plausible_tissue(name, override, low, high):
    path = sample_slide_or_skip() if name == "cmu_small_region.svs" else SLIDES / name
    with open_slide(path, mpp_override=override) as reader:
        mask = tissue_mask(reader)
    print(f"{name} mpp={override}: tissue fraction {mask.fraction:.4f}, mask {mask.array.shape}, downsample {mask.downsample:.2f}")
    assert not mask.is_empty
    assert low < mask.fraction < high
    json.dumps(mask.describe())
    if name.startswith("kidney"):
        assert mask.fraction_in((290, 505, 100, 55)) > 0.6  # the biopsy fragment
        assert mask.fraction_in((1000, 100, 200, 200)) == 0.0  # glass with a smudge


@needs_data
def test_kidney_biopsy_told_quarter_micron_is_not_refused_as_no_tissue():
    from promptnucseg.wsi_pipeline.plan import SegmentSettings, check_slide

    with open_slide(SLIDES / "kidney-48-5.tif") as reader:
        check_slide(reader, SegmentSettings(mpp=0.25))  # used to raise "no tissue found in the slide"


@needs_data
@pytest.mark.parametrize("mpp", [None, 0.25])
def test_pale_and_small_fragments_on_real_glass_are_found_and_the_glass_is_not(tmp_path, mpp):
    with open_slide(SLIDES / "kidney-48-5.tif") as reader:
        glass = reader.read_downsampled(1.0)[0:600, 700:1493].copy()  # real glass: a smudge, dust, a scratch
    tissue = np.asarray(Image.open(KUMAR / "TCGA-18-5592-01Z-00-DX1.png").convert("RGB"))
    yy, xx = np.mgrid[:120, :160]
    oval = ((yy - 60) / 60) ** 2 + ((xx - 80) / 80) ** 2 < 1
    pale = (tissue[:120, :160] * 0.3 + 255 * 0.7).astype(np.uint8)  # 70% white: a faint section edge
    glass[300:420, 100:260][oval] = pale[oval]
    glass[450:490, 650:680] = tissue[500:540, 500:530]  # 40 x 30 px: a crumb of a biopsy
    path = tmp_path / "fragments.png"
    Image.fromarray(glass).save(path)
    with open_slide(path, mpp_override=mpp) as reader:
        mask = tissue_mask(reader)
    assert mask.fraction_in((100, 300, 160, 120)) > 0.6
    assert mask.fraction_in((650, 450, 30, 40)) > 0.9
    assert mask.fraction_in((0, 0, 793, 280)) == 0.0  # glass, the smudge (x 440-560) and dust
    assert mask.fraction_in((300, 300, 300, 300)) == 0.0


@needs_data
def test_mask_resolution_follows_mpp_and_max_side():
    with open_slide(SLIDES / "cmu_small_region.svs") as reader:  # 0.499 um/px, 2220 x 2967
        mask = tissue_mask(reader, mask_mpp=2.0)
        assert mask.downsample == pytest.approx(2.0 / 0.499)
        assert mask.array.shape == (math.ceil(2967 / mask.downsample), math.ceil(2220 / mask.downsample))
        assert mask.details["mask_mpp"] == pytest.approx(2.0)
        coarse = tissue_mask(reader, mask_mpp=8.0)  # 186 px long at 8 um/px: held at the 512-px least side instead
        assert coarse.downsample == pytest.approx(2967 / 512) and max(coarse.array.shape) == 512
        capped = tissue_mask(reader, mask_mpp=1.0, max_side=300)
        assert max(capped.array.shape) <= 300
        assert abs(coarse.fraction - mask.fraction) < 0.05 and abs(capped.fraction - mask.fraction) < 0.05
    with open_slide(SLIDES / "kidney-48-5.tif") as reader:  # no mpp: never finer than level 0
        assert tissue_mask(reader).downsample == 1.0


@needs_data
def test_fraction_in_finds_the_tissue_and_the_glass():
    with open_slide(SLIDES / "kidney-48-5.tif") as reader:
        mask = tissue_mask(reader)
    assert mask.fraction_in((290, 505, 100, 55)) > 0.6  # the fragment
    assert mask.fraction_in((1000, 100, 200, 200)) == 0.0  # glass (with a smudge)
    with open_slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs", mpp_override=0.25) as reader:
        mask = tissue_mask(reader)
    assert mask.fraction_in((2000, 1500, 500, 500)) > 0.9
    assert mask.fraction_in((0, 0, 200, 200)) == 0.0  # outside the scanned area


@pytest.mark.parametrize("image", [HE_GLANDS, HE_EOSIN], ids=["glands", "eosin"])
def test_image_that_is_all_tissue_is_not_called_empty(image):
    with open_slide(image) as reader:
        mask = tissue_mask(reader)
    print(f"{image.name}: tissue fraction {mask.fraction:.3f}")
    assert mask.fraction > 0.95


def test_grayscale_scan_is_found_by_darkness(tmp_path):
    gray = tmp_path / "gray.png"
    Image.open(HE_GLANDS).convert("L").save(gray)
    with open_slide(gray) as reader:
        mask = tissue_mask(reader)
    assert mask.details["saturation"]["uniform"] == "background"
    assert mask.fraction > 0.9


def test_black_scanner_border_is_not_tissue(tmp_path):
    tissue = np.asarray(Image.open(HE_GLANDS).convert("RGB"))[:300, :300]
    img = np.full((600, 900, 3), 255, np.uint8)
    img[:, :300] = 0
    img[150:450, 450:750] = tissue
    path = tmp_path / "border.png"
    Image.fromarray(img).save(path)
    with open_slide(path) as reader:
        mask = tissue_mask(reader)
    assert mask.fraction_in((0, 0, 300, 600)) < 0.02  # only the blurred edge column may leak
    assert mask.fraction_in((450, 150, 300, 300)) > 0.95
    assert mask.fraction_in((760, 0, 140, 600)) == 0.0


def test_blank_glass_gives_an_empty_mask(tmp_path):
    rng = np.random.default_rng(0)
    white = np.full((600, 800, 3), 255, np.uint8)
    noisy = np.clip(255 - np.abs(rng.normal(0, 3, white.shape)), 0, 255).astype(np.uint8)
    for _ in range(30):  # dust specks
        y, x = rng.integers(0, 595), rng.integers(0, 795)
        noisy[y : y + 3, x : x + 3] = rng.integers(60, 200)
    tinted = np.clip(np.array([238, 236, 242]) + rng.normal(0, 2, white.shape), 0, 255).astype(np.uint8)
    for name, pixels in (("white", white), ("noisy", noisy), ("tinted", tinted)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(path)
        with open_slide(path) as reader:
            mask = tissue_mask(reader)
        assert mask.is_empty and mask.fraction == 0.0, name
        assert mask.fraction_in((0, 0, 800, 600)) == 0.0


def test_fraction_in_arithmetic():
    array = np.zeros((4, 6), bool)
    array[1:3, 2:4] = True  # level-0 x 20..40, y 10..30 at downsample 10
    mask = TissueMask(array, 10.0, (60, 40))
    assert mask.fraction == pytest.approx(4 / 24)
    assert mask.fraction_in((20, 10, 20, 20)) == 1.0
    assert mask.fraction_in((0, 0, 60, 40)) == pytest.approx(4 / 24)
    assert mask.fraction_in((25, 15, 1, 1)) == 1.0  # inside one mask pixel
    assert mask.fraction_in((15, 10, 10, 10)) == 0.5  # straddles two mask pixels: both count
    assert mask.fraction_in((100, 100, 50, 50)) == 0.0  # off the slide
    assert mask.fraction_in((0, 0, 0, 10)) == 0.0


def test_parse_roi():
    assert parse_roi("10,20,300,400") == (10, 20, 300, 400)
    assert parse_roi(" 0, 0 ,5,5 ", dimensions=(5, 5)) == (0, 0, 5, 5)
    for bad in ("1,2,3", "a,b,c,d", "1.5,2,3,4", "1;2;3;4", ""):
        with pytest.raises(PipelineInputError, match="not four integers") as err:
            parse_roi(bad, path="slide.svs")
        assert "slide.svs" in str(err.value) and "--roi 1000,2000" in str(err.value)
    for bad in ("-1,0,10,10", "0,0,0,10", "0,0,10,-3"):
        with pytest.raises(PipelineInputError, match="x, y >= 0 and w, h > 0"):
            parse_roi(bad)
    with pytest.raises(PipelineInputError, match=r"outside the 100x80 slide") as err:
        parse_roi("50,50,60,10", dimensions=(100, 80), path="s.svs")
    assert "x+w <= 100" in str(err.value) and "\n" not in str(err.value)
