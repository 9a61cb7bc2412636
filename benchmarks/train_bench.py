"""The `training` part: seconds per training step of each network, before and after the step's
speed-ups, measured interleaved in one process so the ratios hold on a busy machine.

A step is what `models/training/loop.py` does once: make the batch (crops, augmentation,
prompts), forward and loss, backward, gradient clipping, optimizer (and EMA for the prompter).
`before` is the step as it was: batch made in the step, NCHW weights and crops, the segmentor's
loss through autograd's own ops (`sigmoid_focal`, `dice_loss`). Each speed-up is also timed
alone, so the table says what each one buys:

- `prefetch`: the next batch made in a second thread while this step computes (`loop._batches`);
- `channels-last`: weights and crops in channels-last layout (`train.channels_last`);
- `fused-loss`: focal + dice with a hand-written backward (`segmentor.losses._FocalDice`).

`after` is all of them, as `train()` runs now. Every variant computes the same loss (the
`max rel. diff` column: relative difference of the loss, and of the gradient vector by norm, from `before` on one batch).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SPEEDUPS = ("prefetch", "channels-last", "fused-loss")
PROMPTER_SPEEDUPS = ("prefetch", "channels-last")  # the prompter has no decoder nor segmentor loss


@dataclass(frozen=True)
class Variant:
    name: str
    on: frozenset[str]


def variants(kind: str) -> list[Variant]:
    names = PROMPTER_SPEEDUPS if kind == "prompter" else SPEEDUPS
    return [Variant("before", frozenset()), *(Variant(f"+{n}", frozenset({n})) for n in names), Variant("after", frozenset(names))]


class _Runner:
    """One variant's model copy, optimizer and generator; `steps(n)` returns per-step timings."""

    def __init__(self, task, variant: Variant, device: torch.device, seed: int, total_steps: int = 1) -> None:
        from promptnucseg.models.training.loop import EMA, use_channels_last

        self.task = copy.copy(task)
        self.task.model = copy.deepcopy(task.model).to(device).train()
        self.task.channels_last = False
        if "channels-last" in variant.on:
            use_channels_last(self.task)
        if task.kind == "segmentor":
            self.task.fused_loss = "fused-loss" in variant.on
        self.variant, self.device = variant, device
        self.grad_clip = task.config.train.grad_clip
        self.params = [p for p in self.task.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self.ema = EMA(self.task.model, 0.99) if task.use_ema else None
        self.rng = np.random.default_rng(seed)
        self.total_steps, self.made = total_steps, None

    def steps(self, n: int) -> list[dict[str, float]]:
        from promptnucseg.models.training.loop import _batches, apply_gradients

        out = []
        if "prefetch" in self.variant.on and self.made is None:  # one generator for all rounds, like an epoch
            self.made = _batches(self.task, self.rng, self.total_steps)
        made = self.made
        for _ in range(n):
            t0 = time.perf_counter()
            batch = next(made) if made is not None else self.task.make_batch(self.rng)
            t1 = time.perf_counter()
            losses = self.task.batch_loss(batch, self.device)
            t2 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            t3 = time.perf_counter()
            apply_gradients(self.task.model, self.optimizer, self.ema, self.grad_clip)
            t4 = time.perf_counter()
            out.append({"data": t1 - t0, "forward_loss": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0})
        return out


def _loss_and_grads(task, variant: Variant, device: torch.device, seed: int) -> list[torch.Tensor]:
    """The loss and every gradient of one step of `variant` on the batch `seed` draws."""
    runner = _Runner(task, variant, device, seed)
    torch.manual_seed(seed)  # the prompter's dropout draws the same masks in every variant
    loss = runner.task.batch_loss(runner.task.make_batch(np.random.default_rng(seed)), device)["loss"]
    loss.backward()
    return [loss.detach().reshape(1)] + [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in runner.params]


def _largest_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """The larger of the loss's relative difference and the gradient's (as one vector, by norm:
    a bias before a BatchNorm has a gradient of zero but for rounding, so no per-tensor maximum)."""
    loss = float((got[0] - want[0]).abs().max() / want[0].abs().max())
    g, w = torch.cat(got[1:]), torch.cat(want[1:])
    return max(loss, float((g - w).norm() / w.norm()))


def bench_training(config_path: str, steps: int, rounds: int, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Median seconds per step (and per part of a step) of every variant of both networks."""
    from promptnucseg.models.config import load_experiment
    from promptnucseg.models.prompter import Prompter
    from promptnucseg.models.segmentor import build_segmentor
    from promptnucseg.models.training.data import load_split
    from promptnucseg.models.training.tasks import PrompterTask, SegmentorTask

    cfg = load_experiment(config_path)
    dev = torch.device(device)
    train, val = load_split(cfg.data)
    torch.manual_seed(seed)
    tasks = {
        "prompter": PrompterTask(Prompter(cfg.model.prompter), cfg, train, val, augment=cfg.train.augment),
        "segmentor": SegmentorTask(build_segmentor(cfg.model.segmentor), cfg, train, val, augment=cfg.train.augment),
    }
    result: dict[str, Any] = {"config": config_path, "data": cfg.data.train, "training_images": len(train), "batch_size": cfg.train.batch_size,
                              "nuclei_per_crop": cfg.train.nuclei_per_crop, "steps_per_round": steps, "rounds": rounds, "threads": torch.get_num_threads(), "networks": {}}
    for kind, task in tasks.items():
        runners = {v.name: _Runner(task, v, dev, seed, total_steps=1 + steps * rounds) for v in variants(kind)}
        for r in runners.values():  # warm-up: first-call allocations and oneDNN kernel choice
            r.steps(1)
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
        for _ in range(rounds):  # interleaved, so load changes hit every variant alike
            for name, r in runners.items():
                timings[name].extend(r.steps(steps))
        rows = {}
        base = statistics.median(t["step"] for t in timings["before"])
        reference = _loss_and_grads(task, variants(kind)[0], dev, seed)
        for v in variants(kind):
            ts = timings[v.name]
            med = {k: statistics.median(t[k] for t in ts) for k in ts[0]}
            rows[v.name] = {"seconds_per_step": round(med["step"], 3), "speedup": round(base / med["step"], 2),
                            "parts": {k: round(x, 3) for k, x in med.items() if k != "step"},
                            "max_relative_difference": 0.0 if v.name == "before" else _largest_difference(_loss_and_grads(task, v, dev, seed), reference)}
        result["networks"][kind] = rows
    return result


def show(r: dict[str, Any], print_table) -> None:
    for kind, rows in r["networks"].items():
        nuclei = f", {r['nuclei_per_crop']} nuclei each" if kind == "segmentor" else ""
        print_table(
            f"training step, {kind}: {r['batch_size']} crops{nuclei}, {r['threads']} threads, "
            f"median of {r['steps_per_round'] * r['rounds']} steps per variant, interleaved",
            ["variant", "s/step", "speed-up", "data", "forward+loss", "backward", "optimizer", "max rel. diff"],
            [[name, x["seconds_per_step"], x["speedup"], *x["parts"].values(), f"{x['max_relative_difference']:.1e}"] for name, x in rows.items()],
        )
