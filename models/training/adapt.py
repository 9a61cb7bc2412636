"""Adapting a trained prompter to a lab's slides from a person's clicks (`promptnucseg adapt`).

The prompter learns from points alone (the paper's point): the clicks drive its matching,
classification and regression losses as in training. Clicks carry no outlines, so the
auxiliary foreground head, which filters prompts at run time, learns from the source model's
own foreground map with a small disk at every click forced to foreground: it keeps what it
knew and learns the nuclei the person says it missed. Outside a clicked region nothing is
known, so those pixels are painted white (background, no nuclei) rather than left to be
counted as misses. A fixed share of each region, in cells of `cell` px, is held out; the
prompts the model would give there, before and after, are the figures the caller reports.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from promptnucseg.errors import FixableError

from ..checkpoints import read_checkpoint, save_checkpoint
from ..config import AugmentConfig
from ..evaluation.metrics import greedy_point_matching
from ..tiles import ClickedRegion
from ..prompter import Prompter
from ..prompter.losses import PrompterTargets, prompter_loss
from .augment import draw_scale, photometric

WHITE = 255
CLICK_RADIUS = 4  # px at the model's um/px: the disk around a click taught as foreground


@dataclass
class AdaptSettings:
    minutes: float = 10.0  # wall-time budget of the fine-tuning (evaluation not counted)
    max_steps: int | None = None
    lr: float = 1e-4
    batch_size: int = 4
    crop_size: int = 256
    seed: int = 0
    holdout_every: int = 4  # one cell in this many is held out
    cell: int = 128  # px: holdout cells (32 um at 0.25 um/px)
    match_radius: float = 12.0  # px: a prompt within this of a click finds it (3 um at 0.25 um/px)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hed_jitter=0.05))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detection:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / max(self.tp + self.fp, 1)

    @property
    def recall(self) -> float:
        return self.tp / max(self.tp + self.fn, 1)

    @property
    def f1(self) -> float:
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)

    def __add__(self, other: "Detection") -> "Detection":
        return Detection(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass
class Split:
    """A region cut into its training part (held-out cells painted white) and its held-out cells."""

    train: ClickedRegion
    holdout: np.ndarray  # bool (H, W): held-out pixels inside the region
    holdout_points: np.ndarray  # bool (N,) which of the region's points lie in held-out cells


def split_region(region: ClickedRegion, index: int, settings: AdaptSettings) -> Split:
    """Hold out one cell in `holdout_every` (a diagonal pattern, shifted per region, so small
    regions take turns); the training image shows nothing of the held-out cells."""
    h, w = region.inside.shape
    cy, cx = np.meshgrid(np.arange(h) // settings.cell, np.arange(w) // settings.cell, indexing="ij")
    held = ((cx + 2 * cy + index) % settings.holdout_every == 0) & region.inside
    px = np.clip(np.rint(region.points).astype(np.int64), 0, [w - 1, h - 1]) if len(region.points) else np.zeros((0, 2), np.int64)
    held_pts = held[px[:, 1], px[:, 0]] if len(px) else np.zeros(0, bool)
    train_inside = region.inside & ~held
    image = region.image.copy()
    image[~train_inside] = WHITE
    train = ClickedRegion(region.name, image, train_inside, region.points[~held_pts], region.classes[~held_pts])
    return Split(train, held, held_pts)


PromptFinder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # RGB -> (points (N, 2), scores (N,))


def held_out_detection(find: PromptFinder, region: ClickedRegion, split: Split, radius: float) -> Detection:
    """Prompts on the whole region image (its context is real tissue) against the clicks:
    a held-out click found or missed counts, and so does a prompt left over in a held-out cell."""
    image = region.image.copy()
    image[~region.inside] = WHITE
    pts, scores = find(image)
    h, w = region.inside.shape
    if len(pts):
        ip = np.clip(np.rint(pts).astype(np.int64), 0, [w - 1, h - 1])
        keep = region.inside[ip[:, 1], ip[:, 0]]
        pts, scores, ip = pts[keep], scores[keep], ip[keep]
    matched = greedy_point_matching(pts, scores, region.points, radius)
    held_pts = split.holdout_points
    tp = int(held_pts[matched[matched >= 0]].sum())
    fn = int(held_pts.sum()) - tp
    fp = int(((matched < 0) & split.holdout[ip[:, 1], ip[:, 0]]).sum()) if len(pts) else 0
    return Detection(tp, fp, fn)


def _crop(region: ClickedRegion, size: int, rng: np.random.Generator, aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random crop around a random pixel of the region's training part, scaled, turned and
    recoloured: (image (S, S, 3), points (N, 2), classes (N,))."""
    ys, xs = np.nonzero(region.inside)
    k = int(rng.integers(len(ys)))
    scale = draw_scale(rng, aug)
    src = max(8, int(round(size / scale)))
    x0 = int(xs[k]) - int(rng.integers(src))
    y0 = int(ys[k]) - int(rng.integers(src))
    h, w = region.inside.shape
    img = np.full((src, src, 3), WHITE, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + src, w), min(y0 + src, h)
    img[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region.image[sy0:sy1, sx0:sx1]
    pts = region.points.astype(np.float64) - [x0, y0]
    keep = (pts[:, 0] >= -0.5) & (pts[:, 1] >= -0.5) & (pts[:, 0] < src - 0.5) & (pts[:, 1] < src - 0.5)
    pts, cls = pts[keep], region.classes[keep]
    if src != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        pts = (pts + 0.5) * (size / src) - 0.5
    if aug.flip_rot:
        for _ in range(int(rng.integers(4))):  # np.rot90: (x, y) -> (y, S-1-x)
            img = np.rot90(img)
            pts = np.stack([pts[:, 1], size - 1 - pts[:, 0]], 1) if len(pts) else pts
        if rng.random() < 0.5:
            img = img[:, ::-1]
            pts = np.stack([size - 1 - pts[:, 0], pts[:, 1]], 1) if len(pts) else pts
    img = photometric(np.ascontiguousarray(img), rng, aug)
    return img, pts.reshape(-1, 2).astype(np.float32), cls.astype(np.int64)


def _click_disks(points: list[np.ndarray], shape: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) 1 within CLICK_RADIUS px of a click."""
    out = torch.zeros((len(points), 1, *shape))
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    for i, p in enumerate(points):
        for x, y in p.tolist():
            x0, y0 = int(max(x - CLICK_RADIUS, 0)), int(max(y - CLICK_RADIUS, 0))
            x1, y1 = int(min(x + CLICK_RADIUS + 1, shape[1])), int(min(y + CLICK_RADIUS + 1, shape[0]))
            near = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= CLICK_RADIUS**2
            out[i, 0, y0:y1, x0:x1][near] = 1.0
    return out


def adaptation_loss(model: Prompter, source: Prompter, images: np.ndarray, points: list[np.ndarray], classes: list[np.ndarray]) -> dict[str, torch.Tensor]:
    x = model.normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    with torch.no_grad():
        keep = torch.sigmoid(source(x).mask_logits.float())
    out = model(x)
    disks = _click_disks(points, tuple(x.shape[-2:]))
    foreground = torch.maximum(keep, disks)
    targets = PrompterTargets(
        points=[torch.from_numpy(p) for p in points],
        classes=[torch.from_numpy(c if model.config.num_classes > 1 else np.zeros_like(c)) for c in classes],
        foreground=foreground,
    )
    return prompter_loss(out, targets, model.config)


def _freeze_norms(model: nn.Module) -> None:
    """Batch-norm statistics stay the source model's: a few crops per step would only add noise."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class AdaptOutcome:
    state_dict: dict
    before: Detection
    after: Detection
    steps: int
    minutes: float
    train_points: int
    holdout_points: int
    resumed_from_step: int = 0

    def report(self) -> dict:
        return {
            "held_out_before": self.before.to_dict(), "held_out_after": self.after.to_dict(), "steps": self.steps,
            "train_minutes": round(self.minutes, 2), "train_points": self.train_points, "held_out_points": self.holdout_points,
            "resumed_from_step": self.resumed_from_step,
        }


Progress = Callable[[int, float, float, dict], None]  # (step, elapsed s, budget s, last losses)


def adapt_prompter(
    prompter: Prompter, find_prompts: Callable[[Prompter], PromptFinder], regions: Sequence[ClickedRegion], settings: AdaptSettings,
    progress: Progress | None = None, state_path: Path | None = None, fingerprint: str = "",
) -> AdaptOutcome:
    """Fine-tune `prompter` (a copy) on the regions' training parts within the time budget.

    `find_prompts(p)` gives the run-time prompt finder of a prompter (the predictor's window
    grid, NMS and foreground filter), so the held-out figures are what `segment` would place.
    `state_path`: where the fine-tuning saves itself each minute and resumes from when it holds
    the same `fingerprint` (inputs + settings)."""
    splits = [split_region(r, i, settings) for i, r in enumerate(regions)]
    n_train = sum(len(s.train.points) for s in splits)
    n_hold = sum(int(s.holdout_points.sum()) for s in splits)
    if n_hold == 0 or n_train == 0:
        raise FixableError(
            None, f"the clicks cannot be split into a training and a held-out part ({n_train} and {n_hold} points in cells of {settings.cell} px)",
            f"click more nuclei, in regions at least {2 * settings.cell} px wide at the model's resolution",
        )
    trainable = [s.train for s in splits if s.train.inside.any()]
    source = copy.deepcopy(prompter).eval()
    for p in source.parameters():
        p.requires_grad_(False)

    def score(p: Prompter) -> Detection:
        find = find_prompts(p.eval())
        return sum((held_out_detection(find, r, s, settings.match_radius) for r, s in zip(regions, splits)), Detection())

    before = score(source)
    model = copy.deepcopy(prompter)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=1e-4)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    step, spent, resumed = 0, 0.0, 0
    if state_path is not None and state_path.is_file():
        state = read_checkpoint(state_path)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = json.loads(state["rng"])
            step, spent, resumed = int(state["step"]), float(state["spent"]), int(state["step"])
    budget = settings.minutes * 60.0
    started, saved = time.monotonic() - spent, time.monotonic()
    last: dict = {}
    while trainable and time.monotonic() - started < budget and (settings.max_steps is None or step < settings.max_steps):
        model.train()
        _freeze_norms(model)
        crops = [_crop(trainable[int(rng.integers(len(trainable)))], settings.crop_size, rng, settings.augment) for _ in range(settings.batch_size)]
        losses = adaptation_loss(model, source, np.stack([c[0] for c in crops]), [c[1] for c in crops], [c[2] for c in crops])
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        step += 1
        last = {k: float(v.detach()) for k, v in losses.items()}
        if progress is not None:
            progress(step, time.monotonic() - started, budget, last)
        if state_path is not None and time.monotonic() - saved >= 60:
            _save_state(state_path, model, optimizer, rng, step, time.monotonic() - started, fingerprint)
            saved = time.monotonic()
    minutes = (time.monotonic() - started) / 60
    if state_path is not None and step > resumed:
        _save_state(state_path, model, optimizer, rng, step, minutes * 60, fingerprint)
    after = score(model)
    return AdaptOutcome({k: v.detach().clone() for k, v in model.state_dict().items()}, before, after, step, minutes, n_train, n_hold, resumed)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator, step: int, spent: float, fingerprint: str) -> None:
    save_checkpoint(path, {
        "kind": "adaptation", "fingerprint": fingerprint, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": json.dumps(rng.bit_generator.state), "step": step, "spent": spent,
    })
