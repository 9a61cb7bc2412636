"""The network-specific halves of training: batches, losses and validation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import ExperimentConfig
from ..data.datasets import NucleusSample, instance_points
from ..prompter import Prompter, select_prompts
from ..prompter.losses import PrompterTargets, prompter_loss
from ..segmentor import Segmentor, assemble_prompts, knn_negatives
from ..segmentor.losses import mask_iou, segmentor_loss
from .augment import AugmentConfig
from .sampling import interior_points, make_crop, sample_nuclei


def _to_tensor_images(images: np.ndarray | list[np.ndarray], device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W); channels-last keeps the numpy layout (no copy), which
    the CPU convolutions run faster on when the network's weights are channels-last too."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format).to(device)


@dataclass
class PrompterBatch:
    """One prompter step's inputs, made from the run's random generator alone (see `make_batch`)."""

    images: np.ndarray  # (B, S, S, 3) uint8
    points: list[np.ndarray]  # per crop (N_i, 2) float32 centroids (x, y)
    classes: list[np.ndarray]  # per crop (N_i,) int64
    foreground: np.ndarray  # (B, 1, S, S) bool


@dataclass
class SegmentorBatch:
    """One segmentor step's inputs: crops and every crop's prompts, in crop order (None: no nucleus)."""

    images: np.ndarray  # (B, S, S, 3) uint8
    coords: np.ndarray | None  # (P, 1+K, 2) float32
    labels: np.ndarray | None  # (P, 1+K) int64
    targets: np.ndarray | None  # (P, S, S) bool
    image_index: np.ndarray | None  # (P,) int64: each prompt's crop, in crop order


@dataclass
class PrompterTask:
    model: Prompter
    config: ExperimentConfig
    train_samples: list[NucleusSample]
    val_samples: list[NucleusSample]
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    kind: str = "prompter"
    use_ema: bool = True
    channels_last: bool = False

    def make_batch(self, rng: np.random.Generator) -> PrompterBatch:
        size = self.config.data.crop_size
        crops = [make_crop(self.train_samples[int(rng.integers(len(self.train_samples)))], size, rng, self.augment) for _ in range(self.config.train.batch_size)]
        return PrompterBatch(
            images=np.stack([c.image for c in crops]),
            points=[c.centroids for c in crops],
            classes=[self._classes(c.classes) for c in crops],
            foreground=np.stack([c.instances > 0 for c in crops])[:, None],
        )

    def batch_loss(self, batch: PrompterBatch, device: torch.device) -> dict[str, torch.Tensor]:
        x = self.model.normalize(_to_tensor_images(batch.images, device, self.channels_last))
        h, w = batch.foreground.shape[-2:]
        fg = torch.zeros((len(batch.images), 1, *x.shape[-2:]), device=device)
        fg[..., :h, :w] = torch.from_numpy(batch.foreground).to(device)
        targets = PrompterTargets(
            points=[torch.from_numpy(p).to(device) for p in batch.points],
            classes=[torch.from_numpy(c).to(device) for c in batch.classes],
            foreground=fg,
        )
        return prompter_loss(self.model(x), targets, self.model.config)

    def _classes(self, classes: np.ndarray) -> np.ndarray:
        """A one-class prompter learns typed data sets class-agnostically (every nucleus is class 0)."""
        return np.zeros_like(classes) if self.model.config.num_classes == 1 else classes

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Detection F1 (12 px) of prompts vs GT centroids over the validation images; a typed
        prompter also gets per-class F1 (HoVer-Net's F_t) and is scored by the mean of the
        detection F1 and the mean class F1, so the best epoch is good at both."""
        from ..evaluation.metrics import DetectionCounts, class_f1_scores, detection_scores

        total = DetectionCounts()
        for s in self.val_samples:
            h, w = s.instances.shape
            out = model(model.normalize(_to_tensor_images([s.image], device)))
            prompts = select_prompts(out.points[0], out.logits[0], out.mask_logits[0, 0] if model.config.mask_filter else None, (h, w), model.config.nms_distance)
            ids, gt = instance_points(s.instances)
            gt_cls = self._classes(np.array([(s.instance_classes or {}).get(int(i), 0) for i in ids], np.int64))
            total = total + detection_scores(gt, gt_cls, prompts.points, prompts.classes, prompts.scores, radius=12.0)
        tp, fp, fn = total.tp, total.fp, total.fn
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        record = {"score": f1, "det_f1": f1, "det_precision": tp / max(tp + fp, 1), "det_recall": tp / max(tp + fn, 1)}
        if model.config.num_classes > 1:
            mean_f1, per_class = class_f1_scores(total, range(model.config.num_classes))
            record.update({f"class{c}_f1": v for c, v in per_class.items()})
            record["class_f1"] = mean_f1
            record["score"] = f1 if np.isnan(mean_f1) else (f1 + mean_f1) / 2
        return record


@dataclass
class SegmentorTask:
    model: Segmentor
    config: ExperimentConfig
    train_samples: list[NucleusSample]
    val_samples: list[NucleusSample]
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    kind: str = "segmentor"
    use_ema: bool = False
    channels_last: bool = False
    fused_loss: bool = True  # False: focal + dice through autograd's own ops (benchmarks' reference)

    def __post_init__(self) -> None:
        if self.model.config.freeze_prompt_encoder:  # the release freezes only the prompt encoder
            for p in self.model.prompt_encoder.parameters():
                p.requires_grad_(False)

    def make_batch(self, rng: np.random.Generator) -> SegmentorBatch:
        size = self.model.crop_size
        k = self.model.config.num_negatives
        z = self.config.train.nuclei_per_crop
        crops = [make_crop(self.train_samples[int(rng.integers(len(self.train_samples)))], size, rng, self.augment) for _ in range(self.config.train.batch_size)]
        coords, labels, targets, image_index = [], [], [], []
        for i, c in enumerate(crops):
            chosen = sample_nuclei(c, z, rng)
            if len(chosen) == 0:
                continue
            interior = interior_points(c.instances, c.ids, rng)  # one random inside point per nucleus
            neg = knn_negatives(c.centroids, k)[chosen]
            co, la = assemble_prompts(interior[chosen], interior, neg)
            coords.append(co)
            labels.append(la)
            targets.append(c.instances[None] == c.ids[chosen][:, None, None])
            image_index.append(np.full(len(chosen), i, np.int64))
        images = np.stack([c.image for c in crops])
        if not coords:
            return SegmentorBatch(images, None, None, None, None)
        return SegmentorBatch(images, np.concatenate(coords), np.concatenate(labels), np.concatenate(targets), np.concatenate(image_index))

    def batch_loss(self, batch: SegmentorBatch, device: torch.device) -> dict[str, torch.Tensor]:
        if batch.coords is None:  # a batch of empty crops: a zero loss that still touches the graph
            return {"loss": sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0}
        embeddings = self.model.embed(_to_tensor_images(batch.images, device, self.channels_last))
        coords, labels = torch.from_numpy(batch.coords).to(device), torch.from_numpy(batch.labels).to(device)
        # one decoder call per crop: one call for all 200 prompts measured 0.95x on CPU (the
        # per-prompt copies of the image tokens outgrow the cache), benchmarks/README.md
        parts = [self.model.decode(embeddings[i : i + 1], coords[sel], labels[sel]) for i in range(len(batch.images)) if (sel := batch.image_index == i).any()]
        logits, ious = torch.cat([lg for lg, _ in parts]), torch.cat([iou for _, iou in parts])
        return segmentor_loss(logits, ious, torch.from_numpy(batch.targets).to(device).float(), self.model.config, self.fused_loss)

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Mean mask IoU with centroid prompts (the 'oracle' setting) on fixed validation crops."""
        size = model.crop_size
        k = model.config.num_negatives
        ious = []
        for s in self.val_samples:
            h, w = s.instances.shape
            for y0 in range(0, max(h - size, 0) + 1, size):
                for x0 in range(0, max(w - size, 0) + 1, size):
                    img = s.image[y0 : y0 + size, x0 : x0 + size]
                    inst = s.instances[y0 : y0 + size, x0 : x0 + size]
                    if img.shape[:2] != (size, size):
                        continue
                    ids, cents = instance_points(inst)
                    if len(ids) == 0:
                        continue
                    coords, labels = assemble_prompts(cents, cents, knn_negatives(cents, k))
                    emb = model.embed(_to_tensor_images([img], device))
                    lg, _ = model.decode(emb, torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device))
                    target = torch.from_numpy(inst[None] == ids[:, None, None]).to(device).float()
                    ious.append(mask_iou(lg, target).cpu())
        miou = float(torch.cat(ious).mean()) if ious else 0.0
        return {"score": miou, "oracle_miou": miou}
