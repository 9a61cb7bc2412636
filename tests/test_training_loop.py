"""The training loop's mechanics that need no data set: batches made ahead in a thread draw the
generator exactly as making them in the step did, and `--set` edits a config by dotted key."""
from __future__ import annotations

import threading

import numpy as np
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
