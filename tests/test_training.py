"""Short real training runs through the CLI: the loss falls, checkpoints resume, the bundle loads.

Two real Kumar H&E crops with their real instance maps make a tiny data set; the prompter and
the light segmentor train for a few steps on the CPU with the same code path as a full run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from promptnucseg.cli import main
from conftest import HE, HE_CELLS, HE_GLANDS, SHARED_DATA, need

DATA = SHARED_DATA
NAMES = (HE_GLANDS.stem, HE_CELLS.stem)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kumar_light.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """Two 320x320 crops of the suite's own real labelled H&E images in the uniform folder layout."""
    root = tmp_path_factory.mktemp("he_tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name in NAMES:
        rgb = np.asarray(Image.open(HE / "images" / f"{name}.png").convert("RGB"))[100:420, 100:420]
        labels = tifffile.imread(HE / "labels" / f"{name}.tif")[100:420, 100:420]
        Image.fromarray(rgb).save(root / "images" / f"{name}.png")
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype(np.int32))
    return root


def tiny_config(tmp_path: Path, data: Path) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"] = {"train": [str(data)], "val_names": [NAMES[1]], "crop_size": 256}
    cfg["train"].update({"epochs": 4, "steps_per_epoch": 4, "batch_size": 2, "lr": 1.0e-3, "nuclei_per_crop": 8})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["prompter", "segmentor"])
def test_short_training_run_lowers_the_loss_and_resumes(tmp_path, tiny_dataset, kind):
    config = tiny_config(tmp_path, tiny_dataset)
    run = tmp_path / kind
    common = ["--config", str(config), "--out", str(run), "--device", "cpu", "--threads", "2", "--no-progress"]
    assert main([f"train-{kind}", *common, "--epochs", "3"]) == 0
    first = history(run)
    assert [h["epoch"] for h in first] == [1, 2, 3]
    assert first[-1]["train_loss"] < first[0]["train_loss"], [h["train_loss"] for h in first]
    assert "val_score" in first[-1] and (run / "best.pt").is_file()
    # resume picks up at epoch 4 from last.pt instead of starting again
    assert main([f"train-{kind}", *common, "--resume"]) == 0
    assert [h["epoch"] for h in history(run)] == [1, 2, 3, 4]


def test_trained_parts_bundle_into_a_model_the_predictor_loads(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path, tiny_dataset)
    for kind in ("prompter", "segmentor"):
        assert main([f"train-{kind}", "--config", str(config), "--out", str(tmp_path / kind), "--device", "cpu", "--epochs", "1", "--steps-per-epoch", "1", "--no-progress"]) == 0
    bundle = tmp_path / "model.pt"
    assert main(["export-model", "--prompter", str(tmp_path / "prompter" / "best.pt"), "--segmentor", str(tmp_path / "segmentor" / "best.pt"), "--out", str(bundle)]) == 0
    from promptnucseg.models.interface import load_predictor

    predictor = load_predictor(bundle, device="cpu")
    rgb = np.asarray(Image.open(tiny_dataset / "images" / f"{NAMES[1]}.png"))
    (nuclei,) = predictor.predict([rgb])
    inst, cls = nuclei.label_maps(rgb.shape[:2])
    assert inst.shape == rgb.shape[:2] and inst.max() == len(nuclei)
    # swapped parts are refused with the file named
    assert main(["export-model", "--prompter", str(tmp_path / "segmentor" / "best.pt"), "--segmentor", str(tmp_path / "prompter" / "best.pt"), "--out", str(tmp_path / "bad.pt")]) != 0


def test_a_one_class_prompter_trains_on_a_typed_data_set():
    """CoNSeP's four classes join a one-class model's training as plain nuclei (class 0)."""
    import torch

    from promptnucseg.models.config import ExperimentConfig, PrompterConfig
    from promptnucseg.models.data.datasets import open_dataset
    from promptnucseg.models.prompter import Prompter
    from promptnucseg.models.training.tasks import PrompterTask

    consep = DATA / "consep-patches" / "train"
    need(consep)
    sample = open_dataset(consep)[0]
    assert max((sample.instance_classes or {}).values()) > 1  # a typed sample
    cfg = ExperimentConfig()
    cfg.model.prompter = PrompterConfig(backbone="resnet18", fpn_channels=32, num_classes=1)
    cfg.train.batch_size = 2
    task = PrompterTask(Prompter(cfg.model.prompter), cfg, [sample], [sample])
    losses = task.batch_loss(task.make_batch(np.random.default_rng(0)), torch.device("cpu"))
    assert torch.isfinite(losses["loss"])
    assert 0.0 <= task.validate(task.model.eval(), torch.device("cpu"))["det_f1"] <= 1.0


def test_a_typed_prompter_is_validated_per_class():
    """A four-class prompter's validation reports HoVer-Net's per-class F1 and is scored by the
    mean of detection F1 and mean class F1."""
    import torch

    from promptnucseg.models.config import ExperimentConfig, PrompterConfig
    from promptnucseg.models.data.datasets import open_dataset
    from promptnucseg.models.prompter import Prompter
    from promptnucseg.models.training.tasks import PrompterTask

    consep = DATA / "consep-patches" / "train"
    need(consep)
    sample = open_dataset(consep)[0]
    cfg = ExperimentConfig()
    cfg.model.prompter = PrompterConfig(backbone="resnet18", fpn_channels=32, num_classes=4)
    task = PrompterTask(Prompter(cfg.model.prompter), cfg, [sample], [sample])
    record = task.validate(task.model.eval(), torch.device("cpu"))
    assert {"class0_f1", "class1_f1", "class2_f1", "class3_f1", "class_f1", "det_f1"} <= set(record)
    if not np.isnan(record["class_f1"]):
        assert record["score"] == pytest.approx((record["det_f1"] + record["class_f1"]) / 2)


def test_validation_holds_out_whole_source_images_by_pattern(tmp_path):
    """`val_names: [train_8_*]` holds out every patch of source image 8 and no other; a pattern
    that matches nothing is named in the error."""
    from promptnucseg.models.config import DataConfig
    from promptnucseg.models.training.data import load_split

    root = tmp_path / "patches"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("train_8_000", "train_8_001", "train_80_000", "train_9_000"):
        Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(root / "images" / f"{name}.png")
        labels = np.zeros((32, 32), np.int32)
        labels[10:20, 10:20] = 1
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels)
    train, val = load_split(DataConfig(train=[str(root)], val_names=["train_8_*"]))
    assert sorted(s.name for s in val) == ["train_8_000", "train_8_001"]
    assert sorted(s.name for s in train) == ["train_80_000", "train_9_000"]
    with pytest.raises(ValueError, match="train_7_"):
        load_split(DataConfig(train=[str(root)], val_names=["train_7_*"]))


def test_gpu_training_script_checks_itself_on_cpu_and_resumes(tmp_path, tiny_dataset):
    """scripts/train_gpu.sh (one call on a lent GPU) makes a 2-step run without CUDA, hands back
    metrics and best.pt through $OUT, and resumes its run folder on the next call."""
    import os
    import subprocess
    import sys

    config = tiny_config(tmp_path, tiny_dataset)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "KIND": "prompter", "CONFIG": str(config), "RUN": str(tmp_path / "run"), "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_gpu.sh"
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "no CUDA here" in first.stdout and (out / "best.pt").is_file()
    assert [h["epoch"] for h in history(out)] == [1]
    again = subprocess.run(["bash", str(script), "--epochs", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout and [h["epoch"] for h in history(out)] == [1, 2]
