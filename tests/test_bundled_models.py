"""Bundled models by name (`--model default|typed`), `promptnucseg models`, and model files that
refer to another file's segmentor (`export-model --share-segmentor`)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from promptnucseg.cli import main
from promptnucseg.models import bundled
from promptnucseg.models.bundle import bundle_model
from promptnucseg.models.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from promptnucseg.models.config import ModelConfig, PrompterConfig, SegmentorConfig, to_dict
from promptnucseg.models.loading import load_predictor
from promptnucseg.models.prompter import Prompter
from promptnucseg.models.segmentor import build_segmentor


def _config(classes: tuple[str, ...]) -> ModelConfig:
    return ModelConfig(
        class_names=classes,
        class_colors=tuple((40 * i, 100, 200 - 40 * i) for i in range(len(classes))),
        prompter=PrompterConfig(backbone="resnet18", fpn_channels=32, mask_filter=False, num_classes=len(classes)),
        segmentor=SegmentorConfig(arch="sam_cnn_light", embed_dim=32, decoder_mlp_dim=64, encoder_stride=16),
    )


def _prompter_file(path, classes):
    cfg = _config(classes)
    prompter = Prompter(cfg.prompter)
    with torch.no_grad():  # an untrained prompter says "background" everywhere: make it find nuclei
        prompter.class_head[-1].bias[:] = torch.tensor([3.0] * len(classes) + [-3.0])
    save_checkpoint(path, {"kind": "prompter", "state_dict": prompter.state_dict(), "config": {"model": to_dict(cfg)}})
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A self-contained one-class model `base.pt`, and `typed.pt` beside it: a four-class
    prompter that refers to base.pt's segmentor; plus `full.pt`, the same pair self-contained."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    seg_cfg = _config(("nucleus",))
    save_checkpoint(folder / "s.pt", {"kind": "segmentor", "state_dict": build_segmentor(seg_cfg.segmentor).state_dict(), "config": {"model": to_dict(seg_cfg)}})
    bundle_model(_prompter_file(folder / "p1.pt", ("nucleus",)), folder / "s.pt", folder / "base.pt")
    p4 = _prompter_file(folder / "p4.pt", ("Other", "Inflammatory", "Epithelial", "Spindle"))
    bundle_model(p4, folder / "base.pt", folder / "typed.pt", share_segmentor=True)
    bundle_model(p4, folder / "base.pt", folder / "full.pt")
    return folder


def test_a_shared_segmentor_is_referred_to_not_copied_and_loads_the_same(pair):
    typed = read_checkpoint(pair / "typed.pt")
    assert "segmentor" not in typed and typed["segmentor_ref"]["file"] == "base.pt"
    assert (pair / "typed.pt").stat().st_size < 0.6 * (pair / "full.pt").stat().st_size
    shared, full = load_predictor(pair / "typed.pt", device="cpu"), load_predictor(pair / "full.pt", device="cpu")
    assert shared.class_names == ("Other", "Inflammatory", "Epithelial", "Spindle")
    assert all(torch.equal(a, b) for a, b in zip(shared.segmentor.state_dict().values(), full.segmentor.state_dict().values()))
    tile = np.random.default_rng(1).integers(0, 255, (260, 300, 3), dtype=np.uint8)
    a, b = shared.predict([tile])[0], full.predict([tile])[0]
    assert len(a) == len(b) > 0 and np.array_equal(a.classes, b.classes)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    # the run report's model facts say where the segmentor came from
    assert shared.describe()["segmentor_weights"] == {"file": str(pair / "base.pt"), "sha256": typed["segmentor_ref"]["sha256"]}


def test_a_missing_or_changed_shared_segmentor_is_named_with_the_fix(pair, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(pair / "typed.pt", alone / "typed.pt")
    with pytest.raises(CheckpointError, match=r"typed.pt: uses the segmentor of base.pt, which is not beside it.*without --share-segmentor"):
        load_predictor(alone / "typed.pt", device="cpu")
    # a base.pt of other content (re-exported, replaced) is refused by its hash
    shutil.copy(pair / "full.pt", alone / "base.pt")
    with pytest.raises(CheckpointError, match=r"typed.pt: uses the segmentor of .*base.pt, which has changed \(sha256 .*without --share-segmentor"):
        load_predictor(alone / "typed.pt", device="cpu")


def test_share_segmentor_needs_a_model_file_in_the_output_folder(pair, tmp_path):
    with pytest.raises(CheckpointError, match="not in the folder of --out"):
        bundle_model(pair / "p4.pt", pair / "base.pt", tmp_path / "typed.pt", share_segmentor=True)
    with pytest.raises(CheckpointError, match="is a segmentor checkpoint; --share-segmentor refers to the segmentor of a model file"):
        bundle_model(pair / "p4.pt", pair / "s.pt", pair / "x.pt", share_segmentor=True)
    with pytest.raises(CheckpointError, match="refers to another file's segmentor itself"):  # one level of reference
        bundle_model(pair / "p4.pt", pair / "typed.pt", pair / "y.pt", share_segmentor=True)
    # the command line takes the flag
    assert main(["export-model", "--prompter", str(pair / "p4.pt"), "--segmentor", str(pair / "base.pt"), "--out", str(pair / "cli.pt"), "--share-segmentor"]) == 0
    assert "segmentor_ref" in read_checkpoint(pair / "cli.pt")


def test_bundled_names_resolve_to_their_files_and_paths_stay_paths(tmp_path, monkeypatch):
    assert bundled.resolve_model(None) == (bundled.DEFAULT_WEIGHTS, "default")
    assert bundled.resolve_model("default") == (bundled.DEFAULT_WEIGHTS, "default")
    assert bundled.resolve_model(str(tmp_path / "m.pt")) == (tmp_path / "m.pt", None)
    assert bundled.resolve_model(tmp_path / "typed") == (tmp_path / "typed", None)  # a Path is always a file
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path)  # an installation without the typed file
    with pytest.raises(CheckpointError, match="the bundled model 'typed' is missing from this installation.*pass a model file's path"):
        bundled.resolve_model("typed")


def test_model_names_work_on_the_command_lines(tmp_path, capsys):
    """`--model default` is the bundled file; an unknown name is taken as a path and named."""
    if not bundled.DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {bundled.DEFAULT_WEIGHTS} is not in this checkout")
    assert load_predictor("default", device="cpu").describe()["bundled_model"] == "default"
    assert main(["evaluate", "--model", "no-such-model", "--pred", str(tmp_path), "--gt", str(tmp_path)]) == 2  # --model parses for evaluate
    capsys.readouterr()
    from promptnucseg.wsi_pipeline.cli_segment import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, "segment")
    assert parser.parse_args(["x.svs", "--out", "o", "--model", "typed"]).weights == "typed"


def test_models_lists_the_bundled_models_from_their_files_and_cards(capsys):
    if not bundled.DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {bundled.DEFAULT_WEIGHTS} is not in this checkout")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("default: ") and "typed" in out
    assert "nucleus (RGB 220,40,40)" in out and "CC BY-NC-SA 4.0" in out and "pq 0.480" in out
    assert "data set kumar/train" in out and "shared/data" not in out and "../" not in out  # not the build machine's folders
    assert main(["models", "--json"]) == 0
    listing = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    default = listing["default"]
    ckpt = read_checkpoint(bundled.DEFAULT_WEIGHTS)
    recorded = {**ckpt["metrics"]["validation"], "data": bundled.data_set_name(ckpt["metrics"]["validation"]["data"])}
    assert default["classes"] == {"nucleus": [220, 40, 40]} and default["validation"] == recorded
    assert bundled.data_set_name("../shared/data/consep-patches/train") == "consep-patches/train"
    assert default["licence"] == bundled.card_facts(bundled.BUNDLED["default"].card_path)["licence"]
    typed = listing["typed"]
    if typed.get("missing"):
        return
    assert list(typed["classes"]) == ["Other", "Inflammatory", "Epithelial", "Spindle"] and typed["segmentor_from"] == bundled.BUNDLED["default"].file
    assert typed["licence"] and typed["training_data"] and typed["validation"]
