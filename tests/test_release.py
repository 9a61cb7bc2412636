"""The authors' release files, unchanged: reading, key-for-key loading, and parity of outputs.

The fixture (tests/fixtures/release/, README there) is the release's own prompter and
segmentor built from its code at a small size with random weights, saved in its file formats,
with their outputs on a real tile of the sample slide. Our loaders must reproduce them.
"""
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from promptnucseg.models import release
from promptnucseg.models.checkpoints import CheckpointError, read_checkpoint
from promptnucseg.models.loading import load_predictor
from promptnucseg.models.prompter import Prompter, select_prompts
from promptnucseg.wsi_pipeline.sample import SAMPLE_NAME
from conftest import SHARED_DATA, need, sample_slide_or_skip

FIXTURE = Path(__file__).parent / "fixtures" / "release"
SHARED = SHARED_DATA.parent
EXPECTED = torch.load(FIXTURE / "expected.pt", weights_only=True)
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())


def _tile(name: str) -> np.ndarray:
    spec = MANIFEST["tiles"][name]
    # the tiles come from the sample slide: shared data or the user cache
    slide_path = sample_slide_or_skip() if Path(spec["slide"]).name == SAMPLE_NAME else need(SHARED / spec["slide"])
    import openslide

    with openslide.OpenSlide(str(slide_path)) as slide:
        rgb = np.asarray(slide.read_region((spec["x"], spec["y"]), spec["level"], (spec["width"], spec["height"])).convert("RGB"))
    assert hashlib.sha256(rgb.tobytes()).hexdigest() == spec["sha256_rgb_uint8"], "the slide's pixels differ from the fixture's tile"
    return np.array(rgb)  # a writable copy


def _release_prompter(name: str) -> tuple[Prompter, release.ReleasePrompter]:
    path = FIXTURE / name
    found = release.read_release_prompter(path, read_checkpoint(path))
    assert found is not None
    net = Prompter(found.config).eval()
    net.load_state_dict(found.state)  # strict: every release tensor has a place, none is missing
    return net, found


def test_release_files_are_read_without_unpickling_code():
    best = read_checkpoint(FIXTURE / "kumar_prompter_best.pth")
    assert isinstance(best["f1"], np.floating) and "model" in best
    latest = read_checkpoint(FIXTURE / "kumar_prompter_latest.pth")
    assert type(latest["args"]).__name__ == "Namespace"
    assert set(latest) >= {"model", "model_ema", "optimizer", "args"}


def test_a_file_with_foreign_objects_is_refused_as_such_not_as_truncated(tmp_path):
    from fractions import Fraction

    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "thing": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="pickled.pth: holds pickled Python objects that are not weights .*fractions.Fraction"):
        read_checkpoint(path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes((FIXTURE / "kumar_prompter_best.pth").read_bytes()[:4000])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable PyTorch checkpoint.*truncated"):
        read_checkpoint(cut)


def test_numpy_scalars_and_arrays_load_under_this_numpys_names_too(tmp_path):
    # the fixture's files name numpy 1's `numpy.core.multiarray`; this numpy may write `numpy._core`
    with zipfile.ZipFile(FIXTURE / "kumar_prompter_best.pth") as z:
        assert b"numpy.core.multiarray" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    path = tmp_path / "ours.pth"
    torch.save({"f1": np.float64(0.5), "arr": np.arange(3.0)}, path)
    got = read_checkpoint(path)
    assert got["f1"] == 0.5 and got["arr"].tolist() == [0.0, 1.0, 2.0]


def test_latest_pth_gives_its_ema_weights():
    best = release.release_prompter_state(read_checkpoint(FIXTURE / "kumar_prompter_best.pth"))
    latest_ckpt = read_checkpoint(FIXTURE / "kumar_prompter_latest.pth")
    latest = release.release_prompter_state(latest_ckpt)
    assert latest is latest_ckpt["model_ema"]
    assert all(torch.equal(best[k], latest[k]) for k in best)
    assert any(not torch.equal(latest_ckpt["model"][k], best[k]) for k in best)  # the raw weights differ


def test_a_release_state_with_a_foreign_key_names_it():
    state = dict(release.release_prompter_state(read_checkpoint(FIXTURE / "kumar_prompter_best.pth")))
    state["extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        release.to_our_keys(state, "p.pth")


@pytest.mark.parametrize(("layout", "file", "tile"), [("kumar", "kumar_prompter_best.pth", "tile"), ("kumar", "kumar_prompter_best.pth", "tile_odd"), ("pannuke", "pannuke_prompter_best.pth", "tile")])
def test_prompter_reproduces_the_release(layout, file, tile):
    rgb = _tile(tile)
    net, found = _release_prompter(file)
    assert found.preset == layout
    expected = EXPECTED[layout][tile]
    with torch.no_grad():
        x = net.normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
        out = net(x)
    h, w = rgb.shape[:2]
    assert float(x.double().sum()) == pytest.approx(float(expected["input_sum"]), rel=1e-6, abs=1e-2)
    torch.testing.assert_close(out.anchors, expected["anchors"].reshape(-1, 2).float())
    torch.testing.assert_close(out.points[0], expected["pred_coords"].float(), atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(out.logits[0], expected["pred_logits"].float(), atol=2e-5, rtol=1e-5)
    if "pred_masks" in expected:
        torch.testing.assert_close(out.mask_logits, expected["pred_masks"].float(), atol=2e-5, rtol=1e-5)
    else:
        assert list(out.mask_logits.shape) == expected["pred_masks_shape"].tolist()
        assert float(out.mask_logits.double().sum()) == pytest.approx(float(expected["pred_masks_sum"]), rel=1e-5)
    cfg = net.config
    mask = out.mask_logits[0, 0, :h, :w] if cfg.mask_filter else None
    prompts = select_prompts(out.points[0], out.logits[0], mask, (h, w), cfg.nms_distance, release=True)
    ref = expected["points"].numpy()
    assert len(prompts.points) == len(ref)
    order = np.lexsort((prompts.points[:, 1], prompts.points[:, 0]))
    ref_order = np.lexsort((ref[:, 1], ref[:, 0]))
    np.testing.assert_allclose(prompts.points[order], ref[ref_order], atol=2e-4)
    np.testing.assert_allclose(prompts.scores[order], expected["scores"].numpy()[ref_order], atol=1e-5)
    np.testing.assert_array_equal(prompts.classes[order], expected["classes"].numpy()[ref_order])


@pytest.mark.parametrize("k", ["k0", "k1"])
def test_segmentor_reproduces_the_release(k):
    rgb = _tile("tile")
    from promptnucseg.models.loading import _load_segmentor

    path = FIXTURE / "kumar_segmentor.pth"
    segmentor, fields, is_release = _load_segmentor(path, read_checkpoint(path))
    assert is_release and fields["arch"] == "sam_vit" and fields["vit_global_attn"] == (1,)
    segmentor.eval()
    expected = EXPECTED["segmentor"][k]
    with torch.no_grad():
        emb = segmentor.embed(torch.from_numpy(rgb).permute(2, 0, 1)[None])
        torch.testing.assert_close(emb, expected["image_embedding"].float(), atol=2e-5, rtol=1e-5)
        logits, iou = segmentor.decode(emb, expected["prompt_points"].float(), expected["prompt_labels"])
    torch.testing.assert_close(iou, expected["iou"].float(), atol=2e-5, rtol=1e-5)
    assert (logits > 0).flatten(1).sum(1).tolist() == expected["masks_positive"].tolist()
    torch.testing.assert_close(logits.double().flatten(1).sum(1), expected["masks_sum"].double(), atol=5e-2, rtol=1e-5)
    if "masks_first1" in expected:
        torch.testing.assert_close(logits[:1], expected["masks_first1"].float(), atol=2e-5, rtol=1e-5)


def test_a_release_pair_runs_with_its_preset_and_imports_to_one_model_file(tmp_path):
    rgb = _tile("tile")
    pair = load_predictor(FIXTURE / "kumar_segmentor.pth", device="cpu", prompter_weights=FIXTURE / "kumar_prompter_latest.pth")
    assert pair.source["release_preset"]["name"] == "kumar"
    assert pair.config.inference.box_nms_iou == 0.3 and pair.config.segmentor.num_negatives == 0
    assert not pair.config.inference.prompter_on_windows and pair.config.inference.last_window_flush
    prompts = pair._prompts([rgb])[0]  # the whole-tile prompter path gives the release's prompts
    assert len(prompts.points) == len(EXPECTED["kumar"]["tile"]["points"])
    nuclei = pair.predict([rgb])[0]
    assert len(nuclei) >= 1  # (random SAM weights: large overlapping masks, most removed by box NMS)
    out = tmp_path / "release_kumar.pt"
    done = subprocess.run(
        [sys.executable, "-m", "promptnucseg", "import-release", "--prompter", str(FIXTURE / "kumar_prompter_best.pth"), "--segmentor", str(FIXTURE / "kumar_segmentor.pth"), "--out", str(out)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    single = load_predictor(out, device="cpu")
    assert single.config.prompter.layout == "release" and single.source["metrics"]["release"]["preset"]["name"] == "kumar"
    again = single.predict([rgb])[0]
    np.testing.assert_array_equal(again.points, nuclei.points)
    assert all(np.array_equal(a, b) for a, b in zip(again.masks, nuclei.masks))


def test_a_release_prompter_alone_is_refused_with_the_fix():
    with pytest.raises(CheckpointError, match="is a prompter alone.*--prompter-weights"):
        load_predictor(FIXTURE / "kumar_prompter_best.pth", device="cpu")


def test_presets_name_the_release_settings():
    kumar, cpm17, cpm17_h, pannuke = (release.load_preset("kumar"), release.load_preset("cpm17", "sam_vit_b"), release.load_preset("cpm17", "sam_vit_h"), release.load_preset("pannuke"))
    assert (kumar.prompter.nms_distance, kumar.inference.box_nms_iou) == (11, 0.3)
    assert (cpm17.prompter.nms_distance, cpm17.inference.box_nms_iou, cpm17.segmentor.num_negatives) == (12, 0.5, 0)
    assert cpm17_h.segmentor.num_negatives == 1 and cpm17_h.inference.decode_without_negatives
    assert not pannuke.prompter.mask_filter and pannuke.prompter.anchor_step == 8 and len(pannuke.class_names) == 5
    with pytest.raises(ValueError, match="unknown release preset"):
        release.load_preset("monuseg")


def test_segment_runs_a_slide_region_with_release_files_and_reports_the_preset(tmp_path):
    slide = sample_slide_or_skip()
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "promptnucseg", "segment", str(slide), "--out", str(out), "--roi", "896,896,256,256", "--mpp", "0.25", "--no-progress",
        "--weights", str(FIXTURE / "kumar_segmentor.pth"), "--prompter-weights", str(FIXTURE / "kumar_prompter_latest.pth"), "--device", "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(next(out.glob("*/*_report.json")).read_text())
    assert report["model"]["release_preset"]["name"] == "kumar"
    assert report["model"]["config"]["prompter"]["layout"] == "release"
    features = json.loads(next(out.glob("*/*.geojson")).read_text())["features"]
    assert len(features) >= 1 and all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in features)
    # another preset is another run's settings: not taken for the finished run; refused without
    # --overwrite (issue 33: a finished result is replaced only on purpose), run again with it
    refused = subprocess.run([*cmd, "--preset", "cpm17"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert refused.returncode == 1 and "other settings (changed: model_config" in refused.stderr and "--overwrite" in refused.stderr, refused.stderr[-2000:]
    again = subprocess.run([*cmd, "--preset", "cpm17", "--overwrite"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert again.returncode == 0 and "already complete" not in again.stderr + again.stdout
    report = json.loads(next(out.glob("*/*_report.json")).read_text())
    assert report["model"]["release_preset"] == {"name": "cpm17", "reason": "chosen by the user"}
    assert report["model"]["config"]["inference"]["box_nms_iou"] == 0.5
