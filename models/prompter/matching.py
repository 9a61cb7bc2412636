"""Hungarian assignment of anchors to ground-truth nuclei (one anchor per nucleus)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@torch.no_grad()
def match_anchors(
    points: torch.Tensor, logits: torch.Tensor, gt_points: torch.Tensor, gt_classes: torch.Tensor, distance_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor and GT indices of the min-cost matching for one image.

    cost(anchor i, nucleus j) = distance_weight * ||p_i - b_j||_2 - softmax(q_i)[c_j]
    `points` (A, 2), `logits` (A, C+1), `gt_points` (N, 2), `gt_classes` (N,) 0-based.
    """
    if len(gt_points) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    prob = logits.float().softmax(-1)[:, gt_classes.long()]  # (A, N)
    cost = distance_weight * torch.cdist(points.float(), gt_points.float()) - prob
    anchor_idx, gt_idx = linear_sum_assignment(cost.cpu().numpy())
    return anchor_idx.astype(np.int64), gt_idx.astype(np.int64)
