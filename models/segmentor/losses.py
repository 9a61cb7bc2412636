"""Segmentor loss: 20 * focal + 1 * dice + 1 * MSE(predicted IoU, actual IoU).

(The release swapped focal and dice until 2024-12-29; this is the corrected form.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SegmentorConfig


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask mean focal loss (P,)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).flatten(1).float()
    t = target.flatten(1)
    inter = (pred * t).sum(1)
    union = pred.sum(1) + t.sum(1) - inter
    return inter / union.clamp(min=1)


def segmentor_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, config: SegmentorConfig) -> dict[str, torch.Tensor]:
    """logits (P, S, S), iou_pred (P,), target (P, S, S) in {0, 1}."""
    logits = logits.float()
    target = target.float()
    focal = sigmoid_focal(logits, target).mean()
    dice = dice_loss(logits, target).mean()
    actual = mask_iou(logits.detach(), target)
    iou_mse = F.mse_loss(iou_pred.float(), actual)
    total = config.focal_weight * focal + config.dice_weight * dice + config.iou_weight * iou_mse
    return {"loss": total, "focal": focal.detach(), "dice": dice.detach(), "iou_mse": iou_mse.detach(), "iou": actual.mean()}
