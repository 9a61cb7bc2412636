"""The training loop's mechanics that need no data set: batches made ahead in a thread draw the
generator exactly as making them in the step did, and `--set` edits a config by dotted key."""
from __future__ import annotations

import threading

import numpy as np
import torch
import pytest

from promptnucseg.models.config import load_experiment
from promptnucseg.models.training.loop import _batches


class DrawingTask:
    """A task whose batches are its generator's draws, recording the thread that made each."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def make_batch(self, rng: np.random.Generator) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return rng.integers(0, 1 << 30, size=3)


def test_batches_made_ahead_are_the_sequential_ones_and_stop_at_the_epoch():
    task, ahead_rng = DrawingTask(), np.random.default_rng(7)
    sequential_rng = np.random.default_rng(7)
    for steps in (5, 1, 3):  # three epochs
        made = list(_batches(task, ahead_rng, steps))
        want = [sequential_rng.integers(0, 1 << 30, size=3) for _ in range(steps)]
        assert [m.tolist() for m in made] == [w.tolist() for w in want]
        # nothing drawn past the epoch: the state a checkpoint saves is the sequential run's
        assert ahead_rng.bit_generator.state == sequential_rng.bit_generator.state
    assert all(name.startswith("batches") for name in task.threads)
    assert list(_batches(task, ahead_rng, 0)) == []


def test_set_overrides_edit_the_config_by_dotted_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  segmentor:\n    arch: sam_cnn_light\ntrain:\n  epochs: 3\n")
    cfg = load_experiment(path, ["model.segmentor.freeze_prompt_encoder=false", "train.epochs=9", "train.lr_drop_epochs=[4, 6]"])
    assert cfg.model.segmentor.freeze_prompt_encoder is False and cfg.train.epochs == 9 and cfg.train.lr_drop_epochs == (4, 6)
    with pytest.raises(ValueError, match="unknown TrainConfig keys: epoch"):
        load_experiment(path, ["train.epoch=9"])
    with pytest.raises(ValueError, match="expected section.key=value"):
        load_experiment(path, ["train.epochs"])


def test_a_candidate_is_the_best_weights_in_fp16_and_seeds_a_later_run(tmp_path):
    from promptnucseg.models.checkpoints import read_checkpoint, save_checkpoint
    from promptnucseg.models.config import PrompterConfig
    from promptnucseg.models.prompter import Prompter
    from promptnucseg.models.prompter.warm_start import warm_start_prompter
    from promptnucseg.models.training.candidate import save_candidate

    config = PrompterConfig(backbone="resnet18", fpn_channels=32)
    trained = Prompter(config)
    best = tmp_path / "best.pt"
    save_checkpoint(best, {"kind": "prompter", "config": {}, "epoch": 3, "metrics": {"val_score": 0.5}, "state_dict": trained.state_dict(), "optimizer": {"big": torch.zeros(1000)}})
    save_candidate(best, tmp_path / "cand.pt")
    cand = read_checkpoint(tmp_path / "cand.pt")
    assert "optimizer" not in cand and cand["epoch"] == 3 and cand["metrics"] == {"val_score": 0.5}
    assert all(v.dtype == torch.float16 for v in cand["state_dict"].values() if v.is_floating_point())
    later = Prompter(config)
    warm_start_prompter(later, tmp_path / "cand.pt")
    w = trained.state_dict()["class_head.0.weight"]
    assert torch.equal(later.state_dict()["class_head.0.weight"], w.half().float())
