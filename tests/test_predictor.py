"""Predictor: windows, merge rule, tile checks, and model files (bundle round trip, wrong files)."""
import numpy as np
import pytest
import torch

from promptnucseg.models.checkpoints import CheckpointError, save_checkpoint
from promptnucseg.models.config import ModelConfig, PrompterConfig, SegmentorConfig, to_dict
from promptnucseg.models.interface import NucleusPredictor, TileNuclei, span_starts
from promptnucseg.models.loading import load_predictor
from promptnucseg.models.predictor import PromptNucSegPredictor, check_tile, exclusive_masks
from promptnucseg.models.prompter import Prompter
from promptnucseg.models.segmentor import build_segmentor
from promptnucseg.models.bundle import bundle_model


def test_window_starts_cover_on_the_grid_only():
    assert span_starts(100, 256, 192) == [0]
    assert span_starts(256, 256, 192) == [0]
    assert span_starts(448, 256, 192) == [0, 192]
    assert span_starts(449, 256, 192) == [0, 192, 384]  # the last window is padded, not moved
    assert span_starts(1000, 256, 192) == [0, 192, 384, 576, 768]


def test_exclusive_masks_give_overlaps_to_the_higher_score():
    a = np.ones((4, 4), bool)
    nuclei = TileNuclei(points=[[1, 1], [4, 4]], classes=[0, 0], class_scores=[0.9, 0.9], mask_scores=[0.5, 0.8], boxes=[[0, 0, 4, 4], [2, 2, 6, 6]], masks=[a, a])
    out = exclusive_masks(nuclei, (8, 8))
    assert len(out) == 2
    assert out.masks[1].sum() == 16  # the higher score keeps everything
    assert out.masks[0].sum() == 16 - 4  # the lower one loses the 2x2 overlap
    inst, _ = out.label_maps((8, 8))
    assert (inst == 1).sum() == 12 and (inst == 2).sum() == 16
    # a mask entirely covered by a better one disappears
    covered = TileNuclei(points=[[1, 1], [1, 1]], classes=[0, 0], class_scores=[1, 1], mask_scores=[0.1, 0.9], boxes=[[0, 0, 4, 4], [0, 0, 4, 4]], masks=[a, a])
    assert len(exclusive_masks(covered, (8, 8))) == 1


def test_a_mask_mostly_covered_by_a_better_one_is_dropped_when_asked():
    a = np.ones((4, 4), bool)
    # the lower-scoring mask keeps 7 of its 16 pixels (9 covered: 56%)
    nuclei = TileNuclei(points=[[1, 1], [3, 3]], classes=[0, 0], class_scores=[1, 1], mask_scores=[0.5, 0.8], boxes=[[0, 0, 4, 4], [1, 1, 5, 5]], masks=[a, a])
    assert len(exclusive_masks(nuclei, (8, 8))) == 2  # default: every nucleus with pixels left stays
    assert len(exclusive_masks(nuclei, (8, 8), max_covered=0.6)) == 2
    kept = exclusive_masks(nuclei, (8, 8), max_covered=0.5)
    assert len(kept) == 1 and kept.mask_scores[0] == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)])
def test_bad_tiles_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match="RGB|empty"):
        check_tile(bad)


def _tiny_config() -> ModelConfig:
    return ModelConfig(
        prompter=PrompterConfig(backbone="resnet18", fpn_channels=32, mask_filter=False),
        segmentor=SegmentorConfig(arch="sam_cnn_light", embed_dim=32, decoder_mlp_dim=64, encoder_stride=16),
    )


@pytest.fixture(scope="module")
def tiny_predictor():
    torch.manual_seed(0)
    cfg = _tiny_config()
    prompter = Prompter(cfg.prompter)
    with torch.no_grad():  # an untrained prompter says "background" everywhere; make it say "nucleus"
        prompter.class_head[-1].bias[:] = torch.tensor([3.0, -3.0])
    return PromptNucSegPredictor(prompter, build_segmentor(cfg.segmentor), cfg, "cpu")


def test_predictor_meets_the_interface_for_any_tile_size(tiny_predictor):
    assert isinstance(tiny_predictor, NucleusPredictor)
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, s + (3,), dtype=np.uint8) for s in [(1, 1), (37, 300), (256, 256), (300, 520)]]
    outs = tiny_predictor.predict(tiles)
    assert len(outs) == 4
    for tile, out in zip(tiles, outs):
        h, w = tile.shape[:2]
        assert isinstance(out, TileNuclei)
        if len(out):
            assert (out.boxes[:, [0, 1]] >= 0).all() and (out.boxes[:, 2] <= w).all() and (out.boxes[:, 3] <= h).all()
            inst, cls = out.label_maps((h, w))
            assert inst.max() == len(out)  # masks are exclusive: every nucleus keeps pixels
            assert set(np.unique(cls)) <= {0, 1}
    assert len(outs[3]) > 0  # windows were decoded on the large tile


def synthetic_he(size: int, seed: int = 0) -> np.ndarray:
    """Pink stroma with ~0.6 dark-purple elliptical 'nuclei' per 1000 px², blurred and noisy."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (235, 190, 215)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(size * size * 6e-4)):
        cx, cy = rng.uniform(0, size, 2)
        a, b = rng.uniform(5, 10, 2)
        th = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] = (90, 60, 140)
    img = ndi.gaussian_filter(img, (1, 1, 0)) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_tile_on_the_window_grid_reproduces_the_whole_image_in_its_core():
    """The seam guarantee at model level, with the bundled model: a 448-px tile cut at a
    multiple of the window step gives the very prompts and masks of one pass over the whole
    704-px image for every nucleus in its core (128 px in from each edge). The image is not
    a whole number of windows, so this also fails if windows ever move to fit an image's end."""
    predictor = load_predictor(device="cpu")
    size, step = predictor.window_grid
    assert (size, step) == (256, 192)
    image = synthetic_he(704)
    x0 = y0 = step
    tile = np.ascontiguousarray(image[y0 : y0 + 448, x0 : x0 + 448])
    whole, part = predictor.predict([image, tile])
    lo, hi = x0 + 128, x0 + 448 - 128

    def in_core(points: np.ndarray) -> np.ndarray:
        return np.flatnonzero(((points >= lo) & (points < hi)).all(1))

    w_idx, p_idx = in_core(whole.points), in_core(part.points + [x0, y0])
    assert len(w_idx) > 10
    np.testing.assert_allclose(part.points[p_idx] + [x0, y0], whole.points[w_idx], atol=1e-3)
    w_inst, _ = whole.label_maps(image.shape[:2])
    p_inst, _ = part.label_maps(tile.shape[:2])
    for a, b in zip(w_idx, p_idx):
        assert np.array_equal(w_inst[y0 : y0 + 448, x0 : x0 + 448] == a + 1, p_inst == b + 1)


def test_bundle_round_trip_gives_identical_nuclei(tmp_path, tiny_predictor):
    cfg = tiny_predictor.config
    base = {"config": {"model": to_dict(cfg)}}
    save_checkpoint(tmp_path / "p.pt", {"kind": "prompter", "state_dict": tiny_predictor.prompter.state_dict(), **base})
    save_checkpoint(tmp_path / "s.pt", {"kind": "segmentor", "state_dict": tiny_predictor.segmentor.state_dict(), **base})
    bundle_model(tmp_path / "p.pt", tmp_path / "s.pt", tmp_path / "model.pt", half=False)
    loaded = load_predictor(tmp_path / "model.pt", device="cpu")
    tile = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    a, b = tiny_predictor.predict([tile])[0], loaded.predict([tile])[0]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.points, b.points)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert loaded.describe()["weights_sha256"]
    # a best epoch's `minutes` count from its resumed chunk's start: not training time, so not kept
    assert "minutes" not in loaded.source["metrics"]["prompter"] and "minutes" not in loaded.source["metrics"]["segmentor"]
    # a prompter alone is not a model: the error says what to pass
    with pytest.raises(CheckpointError, match="prompter alone"):
        load_predictor(tmp_path / "p.pt", device="cpu")
    # a segmentor checkpoint of ours combines with a given prompter
    combo = load_predictor(tmp_path / "s.pt", device="cpu", prompter_weights=tmp_path / "p.pt")
    assert len(combo.predict([tile])[0]) == len(a)
    # inference settings chosen after training go into the bundle from a config file
    (tmp_path / "run.yaml").write_text("model:\n  name: tuned\n  inference:\n    mask_threshold: -1.0\n    max_covered_fraction: 0.7\n")
    bundle_model(tmp_path / "p.pt", tmp_path / "s.pt", tmp_path / "tuned.pt", half=False, run_config=tmp_path / "run.yaml")
    tuned = load_predictor(tmp_path / "tuned.pt", device="cpu")
    assert tuned.config.name == "tuned" and tuned.config.inference.mask_threshold == -1.0 and tuned.config.inference.max_covered_fraction == 0.7
    assert tuned.config.prompter == loaded.config.prompter and tuned.config.segmentor == loaded.config.segmentor
    # a model file can give its prompter to a new bundle (v2 keeps v1's prompter)
    bundle_model(tmp_path / "model.pt", tmp_path / "s.pt", tmp_path / "kept.pt", half=False)
    kept = load_predictor(tmp_path / "kept.pt", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(kept.prompter.state_dict().values(), loaded.prompter.state_dict().values()))


def test_foreign_and_truncated_weights_are_refused(tmp_path):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="neither a promptnucseg model nor an official SAM"):
        load_predictor(foreign, device="cpu")
    good = tmp_path / "ok.pt"
    save_checkpoint(good, {"kind": "model", "config": {}, "prompter": {}, "segmentor": {}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_predictor(truncated, device="cpu")


def test_dihedral_points_move_with_their_pixels():
    from promptnucseg.models.predictor import DIHEDRAL, dihedral, dihedral_points, undo_dihedral

    size = 7
    for view in DIHEDRAL:
        img = torch.zeros(1, size, size)
        img[0, 2, 5] = 1  # row 2, column 5: the point (x=5, y=2)
        moved = dihedral(img, *view)
        x, y = dihedral_points(np.array([[5.0, 2.0]]), size, *view)[0]
        assert moved[0, int(y), int(x)] == 1, view
        assert torch.equal(undo_dihedral(moved, *view), img)
    assert len({tuple(dihedral(torch.arange(9.0).view(3, 3), *v).flatten().tolist()) for v in DIHEDRAL}) == 8


def test_tta_masks_follow_a_flipped_window():
    """With all eight views averaged, a mirrored window's masks are the mirrored masks."""
    from promptnucseg.models.prompter.postprocess import Prompts

    predictor = load_predictor(device="cpu", tta=True)
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    tile[60:90, 100:140] = (70, 40, 120)  # a dark purple blob the segmentor can take for a nucleus
    pts = np.array([[120.0, 75.0], [30.0, 200.0]], np.float32)
    prompts = Prompts(pts, np.zeros(2, np.int16), np.ones(2, np.float32))
    mirrored = Prompts(np.stack([255 - pts[:, 0], pts[:, 1]], 1).astype(np.float32), prompts.classes, prompts.scores)
    with torch.inference_mode():
        a = predictor._segment(tile, prompts)
        b = predictor._segment(np.ascontiguousarray(tile[:, ::-1]), mirrored)
    ia, _ = a.label_maps((256, 256))
    ib, _ = b.label_maps((256, 256))
    fa, fb = ia > 0, ib[:, ::-1] > 0
    assert fa.any() and (fa & fb).sum() / (fa | fb).sum() > 0.99
    np.testing.assert_allclose(np.sort(a.mask_scores), np.sort(b.mask_scores), atol=1e-5)
