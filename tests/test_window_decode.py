"""A window's prompts decoded at once (image tokens shared) with boxed upsampling give the reference's masks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from promptnucseg.models.config import SegmentorConfig
from promptnucseg.models.interface import ModelFacts, Palette, TileTissue, load_predictor, span_starts
from promptnucseg.models.segmentor import assemble_prompts, build_segmentor, knn_negatives
from promptnucseg.models.segmentor.window_decode import boxed_upsample, low_res_masks
from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
from promptnucseg.wsi_pipeline.slides import open_slide

from conftest import SHARED_DATA

KUMAR = SHARED_DATA / "kumar" / "train" / "images" / "TCGA-18-5592-01Z-00-DX1.png"


@pytest.mark.parametrize("n,size", [(128, 256), (64, 256), (16, 16)])
def test_boxed_upsampling_keeps_every_pixel_above_the_threshold(n, size):
    rng = np.random.default_rng(n)
    low = torch.from_numpy(rng.normal(-6, 0.5, (12, n, n)).astype(np.float32))  # background far below the threshold
    low[0] = -10  # nothing passes: an empty crop
    low[1, 0, 0] = 4  # at the corner: no margin to take on two sides
    low[2, n // 2, n // 3] = 2
    low[3, :, -1] = 1  # a whole edge
    for k in range(4, 12):  # blobs of smooth logits, as masks are
        y, x = rng.integers(0, n, 2)
        yy, xx = np.mgrid[:n, :n]
        low[k] += torch.from_numpy(
            (8 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (n / 10) ** 2))).astype(np.float32)
        )
    full = F.interpolate(low[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    crops = boxed_upsample(low, size, -1.5)
    assert crops[0].logits.size == 0 and not crops[0].paste(size, -1.5).any()
    for k, c in enumerate(crops):
        assert np.array_equal(c.paste(size, -1.5), full[k] > -1.5), k
        h, w = c.logits.shape
        np.testing.assert_allclose(c.logits, full[k, c.y : c.y + h, c.x : c.x + w], atol=1e-5)
    assert sum(c.logits.size for c in crops) < 0.5 * full.size  # boxes, not windows


@pytest.mark.parametrize("arch", ["sam_cnn_light_high_res", "sam_cnn_light", "sam_vit"])
def test_shared_image_tokens_give_the_reference_decode(arch):
    """Official SAM's decoder (a small `sam_vit`), the light one and the high-resolution one."""
    torch.manual_seed(0)
    if arch == "sam_vit":
        cfg = SegmentorConfig(
            arch="sam_vit",
            crop_size=64,
            vit_dim=32,
            vit_depth=2,
            vit_heads=2,
            vit_global_attn=[1],
            vit_window=4,
            embed_dim=32,
            decoder_mlp_dim=64,
        )
    else:
        cfg = SegmentorConfig(
            arch="sam_cnn_light",
            crop_size=64,
            embed_dim=32,
            decoder_mlp_dim=64,
            encoder_stride=16,
            high_res=arch.endswith("high_res"),
        )
    seg = build_segmentor(cfg).eval()
    for p in seg.mask_decoder.parameters():  # the high-res branches start at zero: give them something to add
        p.data += 0.05 * torch.randn_like(p)
    with torch.inference_mode():
        emb = seg.embed(torch.rand(2, 3, 64, 64) * 255)[1:2]
        points = np.random.default_rng(1).uniform(0, 63, (7, 2)).astype(np.float32)
        coords, labels = assemble_prompts(points, points, knn_negatives(points, 1))
        ref, ref_iou = seg.decode(emb, torch.from_numpy(coords), torch.from_numpy(labels))
        low, iou = low_res_masks(seg, emb, torch.from_numpy(coords), torch.from_numpy(labels))
    assert low.shape[-1] in (16, 32)
    up = F.interpolate(low[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def default_predictor():
    return load_predictor(device="cpu")


def test_default_model_gives_the_reference_nuclei_on_real_tissue(default_predictor, kumar_strip):
    """The bundled model on real tissue (two windows wide, so inner edges and overlaps count):
    the boxed path gives the reference path's nuclei, mask for mask."""
    tile = kumar_strip
    default_predictor.boxed_masks = False
    try:
        ref = default_predictor.predict([tile])[0]
    finally:
        default_predictor.boxed_masks = True
    out = default_predictor.predict([tile])[0]
    assert len(ref) > 10
    assert len(out) == len(ref)
    np.testing.assert_array_equal(out.points, ref.points)
    np.testing.assert_array_equal(out.boxes, ref.boxes)
    np.testing.assert_allclose(out.mask_scores, ref.mask_scores, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(out.masks, ref.masks))


def test_tile_tissue_cells_cover_their_boxes():
    cells = np.zeros((3, 4), bool)
    cells[1, 2] = True  # tile px x [-8 + 2 * 32, -8 + 3 * 32) = [56, 88), y [-4 + 32, -4 + 64) = [28, 60)
    tissue = TileTissue(cells, 32.0, -8.0, -4.0)
    assert tissue.any_in(0, 0, 256, 256)
    assert (
        tissue.any_in(87, 59, 300, 300)
        and not tissue.any_in(88.01, 0, 300, 300)
        and not tissue.any_in(0, 60.01, 300, 300)
    )
    assert (
        tissue.any_in(0, 0, 56.01, 28.01)
        and not tissue.any_in(0, 0, 55.99, 300)
        and not tissue.any_in(0, 0, 300, 27.99)
    )
    assert tissue.any_in(0, 0, 56, 300)  # a box edge on a cell edge takes the cell: errs towards running
    assert not TileTissue(np.zeros((0, 0), bool), 32.0).any_in(0, 0, 256, 256)


def test_the_plan_gives_each_window_the_tissue_the_mask_puts_there():
    """`SlidePlan.tissue_on` in tile pixels never skips a window the mask's own level-0 test touches, and
    disagrees with it only where a window edge falls on a mask cell edge (there it runs the window)."""
    slide = SHARED_DATA / "slides" / "cmu_small_region.svs"
    settings = SegmentSettings(tile_size=1024, overlap=128, mpp=None)
    with open_slide(slide) as reader:
        plan = plan_slide(reader, settings, ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True))
    assert plan.tissue is not None
    mixed = extra = 0
    for tile in plan.tiles:
        tissue = plan.tissue_on(tile)
        x0, y0, _, _ = plan.level0_box(tile)
        found = []
        for wy in span_starts(tile.h, 256, 192):
            for wx in span_starts(tile.w, 256, 192):
                box = (x0 + wx * plan.scale, y0 + wy * plan.scale, 256 * plan.scale, 256 * plan.scale)
                found.append(tissue.any_in(wx, wy, wx + 256, wy + 256))
                assert found[-1] or plan.tissue.fraction_in(box) == 0, (tile.index, wx, wy)
                extra += found[-1] and plan.tissue.fraction_in(box) == 0
        mixed += any(found) and not all(found)
    assert mixed > 0  # the slide's tissue edge runs through tiles: some of their windows are glass
    assert extra <= 0.05 * sum(len(span_starts(t.h, 256, 192)) * len(span_starts(t.w, 256, 192)) for t in plan.tiles)


@pytest.fixture(scope="module")
def kumar_strip():
    return np.ascontiguousarray(np.asarray(Image.open(KUMAR).convert("RGB"))[300:556, 200:648])  # two windows wide


def test_windows_without_tissue_are_not_run_and_the_rest_is_unchanged(default_predictor, kumar_strip):
    """Tissue marked only on the left of a two-window strip: the right window is skipped and
    counted, and the nuclei away from it are the ones of the full run."""
    full = default_predictor.predict([kumar_strip])[0]
    cells = np.zeros((8, 14), bool)
    cells[:, :4] = True  # tile px x < 128 (cells of 32 px)
    before = (default_predictor.windows.run, default_predictor.windows.skipped)
    part = default_predictor.predict([kumar_strip], tissue=[TileTissue(cells, 32.0)])[0]
    assert (default_predictor.windows.run - before[0], default_predictor.windows.skipped - before[1]) == (1, 1)
    far = full.points[:, 0] < 128  # prompts outside the skipped window [192, 448) by more than the overlap
    assert far.sum() > 5
    near = part.points[:, 0] < 128
    # the prompter now sees one window per batch instead of two: its convolutions round a little
    # differently (points move by ~1e-5 px), so masks may differ by a pixel where a logit sits on the threshold
    np.testing.assert_allclose(part.points[near], full.points[far], atol=1e-3)
    np.testing.assert_allclose(part.boxes[near], full.boxes[far], atol=1)
    inst_a, _ = part.select(near).label_maps(kumar_strip.shape[:2])
    inst_b, _ = full.select(far).label_maps(kumar_strip.shape[:2])
    assert np.count_nonzero((inst_a > 0) != (inst_b > 0)) <= 0.005 * np.count_nonzero(inst_b)
    assert len(part) < len(full)  # the skipped window's own nuclei are gone
