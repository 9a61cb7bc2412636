"""One training loop for both networks: AdamW, grad clipping, EMA, per-epoch checkpoints,
`--resume`, wall-time budget, tqdm progress and a JSON-lines metrics log.

A `TrainingTask` supplies the network-specific parts (batches, loss, validation, export);
everything about bookkeeping lives here once. The next step's batch is made in a second thread
while the current step computes (`_batches`); the generator is drawn in the same order as
without it, so a run's data, and its resumed continuation, are the same either way.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoints import CheckpointError, expect_kind, read_checkpoint, save_checkpoint
from ..config import ExperimentConfig, to_dict


class TrainingTask(Protocol):
    kind: str  # "prompter" or "segmentor"
    model: nn.Module
    use_ema: bool

    channels_last: bool

    def make_batch(self, rng: np.random.Generator) -> Any:
        """One step's inputs (numpy): every random draw of a step happens here, none in `batch_loss`."""
        ...

    def batch_loss(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]: ...

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Must include "score" (higher is better) used to keep the best checkpoint."""
        ...


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...] | list[str]) -> None:
    """Train only the parameters under `prefixes`: the others stop needing gradients (so backward
    stops at the first trainable layer, which is what makes a head-only run cheap) and the
    modules holding only them go to eval mode. Call again after every `model.train()`."""
    if not prefixes:
        return

    def under(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    names = [n for n, _ in model.named_parameters()]
    if not any(under(n) for n in names):
        raise ValueError(f"train.trainable {list(prefixes)} names no parameter of the {type(model).__name__} (its parameters start with {sorted({n.split('.')[0] for n in names})})")
    for name, param in model.named_parameters():
        param.requires_grad_(under(name))
    for name, module in model.named_modules():
        if name and not under(name) and not any(p.startswith(name + ".") for p in prefixes):
            module.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EMA:
    """Exponential moving average of weights (buffers copied), as the release's prompter uses."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_v, v in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema_v.copy_(v)


def use_channels_last(task: TrainingTask) -> None:
    """The task's weights and crops in channels-last layout: the CPU convolutions' faster one,
    the same arithmetic up to rounding."""
    task.model.to(memory_format=torch.channels_last)
    task.channels_last = True


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, grad_clip: float) -> None:
    """What a step does once the gradients are in: clip (when set), step, and follow with the EMA."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(model)


def _batches(task: TrainingTask, rng: np.random.Generator, steps: int) -> Iterator[Any]:
    """`steps` batches of one epoch, each made while the one before it is trained on.

    Only the maker thread draws from `rng` until the epoch's last batch is made, and it makes
    no batch past the epoch, so the generator state checkpointed after the epoch is the one a
    run without prefetching would have saved."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as pool:
        pending = pool.submit(task.make_batch, rng) if steps > 0 else None
        for step in range(steps):
            batch = pending.result()
            pending = pool.submit(task.make_batch, rng) if step + 1 < steps else None
            yield batch


@dataclass
class TrainResult:
    out_dir: Path
    epochs_done: int
    best_score: float
    history: list[dict[str, Any]]


def train(task: TrainingTask, config: ExperimentConfig, out_dir: str | Path, device: torch.device, resume: bool = False, progress: bool = True) -> TrainResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tc = config.train
    seed_everything(tc.seed)
    model = task.model.to(device)
    if tc.channels_last:
        use_channels_last(task)
    freeze_all_but(model, tc.trainable)
    lr = tc.lr * tc.batch_size / 8
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tc.lr_drop_epochs), gamma=0.1)
    ema = EMA(model, tc.ema_decay) if task.use_ema else None
    rng = np.random.default_rng(tc.seed)
    start_epoch, best, history = 0, -math.inf, []
    last_path = out / "last.pt"
    if resume:
        if not last_path.is_file():
            raise CheckpointError(last_path, "nothing to resume from", "run without --resume first, or point --out at the earlier run")
        state = read_checkpoint(last_path)
        expect_kind(last_path, state, (task.kind,))
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The config owns the schedule: a resumed run may be given later lr drops than it started with.
        scheduler.milestones = Counter(tc.lr_drop_epochs)
        if ema is not None:
            ema.model.load_state_dict(state["ema_state_dict"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, history = int(state["epoch"]), float(state["best_score"]), list(json.loads(state["history"]))
    log_path = out / "metrics.jsonl"
    started = time.monotonic()
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        freeze_all_but(model, tc.trainable)
        sums: dict[str, float] = {}
        batches = _batches(task, rng, tc.steps_per_epoch)
        bar = tqdm(batches, total=tc.steps_per_epoch, desc=f"{task.kind} epoch {epoch + 1}/{tc.epochs}", disable=not progress, leave=False)
        for batch in bar:
            losses = task.batch_loss(batch, device)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            apply_gradients(model, optimizer, ema, tc.grad_clip)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
        scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v / tc.steps_per_epoch for k, v in sums.items()}}
        eval_model = ema.model if ema is not None else model
        if tc.val_every and (epoch + 1) % tc.val_every == 0:
            eval_model.eval()
            record.update({f"val_{k}": v for k, v in task.validate(eval_model, device).items()})
        record["minutes"] = (time.monotonic() - started) / 60
        history.append(record)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        score = record.get("val_score", -record["train_loss"])
        common = {"kind": task.kind, "config": to_dict(config), "epoch": epoch + 1, "metrics": record}
        if score > best:
            best = score
            save_checkpoint(out / "best.pt", {**common, "state_dict": eval_model.state_dict()})
        save_checkpoint(
            last_path,
            {
                **common,
                "state_dict": model.state_dict(),
                "ema_state_dict": ema.model.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "best_score": best,
                "history": json.dumps(history),
            },
        )
        if progress:
            tqdm.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
        if tc.max_minutes is not None and (time.monotonic() - started) / 60 >= tc.max_minutes:
            break
    return TrainResult(out, history[-1]["epoch"] if history else start_epoch, best, history)
