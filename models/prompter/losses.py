"""The prompter's three losses: anchor classification, point regression, foreground focal."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PrompterConfig
from .matching import match_anchors
from .network import PrompterOutput


@dataclass
class PrompterTargets:
    points: list[torch.Tensor]  # per image (N_i, 2) (x, y) in input pixels
    classes: list[torch.Tensor]  # per image (N_i,) 0-based
    foreground: torch.Tensor  # (B, 1, H, W) float {0, 1}, same size as the padded input


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (Lin et al.) without alpha balancing."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()


def prompter_loss(out: PrompterOutput, targets: PrompterTargets, config: PrompterConfig) -> dict[str, torch.Tensor]:
    b, a, n_cls = out.logits.shape
    background = n_cls - 1
    target_cls = torch.full((b, a), background, dtype=torch.long, device=out.logits.device)
    matched_pred, matched_gt = [], []
    for i in range(b):
        ai, gi = match_anchors(out.points[i], out.logits[i], targets.points[i], targets.classes[i], config.match_distance_weight)
        ai_t = torch.as_tensor(ai, device=out.logits.device)
        gi_t = torch.as_tensor(gi, device=out.logits.device)
        target_cls[i, ai_t] = targets.classes[i][gi_t].long()
        matched_pred.append(out.points[i][ai_t])
        matched_gt.append(targets.points[i][gi_t])
    weight = torch.ones(n_cls, device=out.logits.device)
    if config.class_weights:
        if len(config.class_weights) != n_cls - 1:
            raise ValueError(f"prompter.class_weights has {len(config.class_weights)} values for {n_cls - 1} classes")
        weight[:background] = torch.tensor(config.class_weights, dtype=weight.dtype, device=weight.device)
    weight[background] = config.background_weight
    loss_cls = F.cross_entropy(out.logits.reshape(-1, n_cls).float(), target_cls.reshape(-1), weight=weight)
    n_points = max(sum(len(p) for p in targets.points), 1)
    pred = torch.cat(matched_pred) if matched_pred else out.points.new_zeros((0, 2))
    gt = torch.cat(matched_gt) if matched_gt else out.points.new_zeros((0, 2))
    loss_reg = ((pred.float() - gt.float()) ** 2).sum() / n_points
    loss_mask = binary_focal_loss(out.mask_logits.float(), targets.foreground.float(), config.focal_gamma)
    total = loss_cls + config.regression_weight * loss_reg + config.aux_mask_weight * loss_mask
    return {"loss": total, "cls": loss_cls.detach(), "reg": loss_reg.detach(), "mask": loss_mask.detach()}
