"""From raw anchor predictions to one prompt per nucleus: class, mask-aided filter, point NMS."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree


@dataclass
class Prompts:
    points: np.ndarray  # (N, 2) float32 (x, y)
    classes: np.ndarray  # (N,) int16, 0-based
    scores: np.ndarray  # (N,) float32 probability of that class


def point_nms(points: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept by greedy NMS: best score first, drop others within `radius` px."""
    if len(points) == 0 or radius <= 0:
        return np.arange(len(points))
    order = np.argsort(-scores, kind="stable")
    tree = cKDTree(points)
    suppressed = np.zeros(len(points), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[tree.query_ball_point(points[i], r=radius)] = True
    return np.asarray(keep, np.int64)


@torch.no_grad()
def select_prompts(
    points: torch.Tensor,
    logits: torch.Tensor,
    mask_logits: torch.Tensor | None,
    size_hw: tuple[int, int],
    nms_distance: float,
) -> Prompts:
    """One image: `points` (A, 2), `logits` (A, C+1), `mask_logits` (H', W') or None.

    Keeps anchors whose argmax is not background, inside the unpadded image, and (when a
    foreground map is given) whose foreground logit at the point is > 0.
    """
    prob = logits.float().softmax(-1)
    score, cls = prob[:, :-1].max(-1)
    keep = prob.argmax(-1) != prob.shape[-1] - 1
    h, w = size_hw
    pts = points.float()
    keep &= (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] <= h - 1)
    if mask_logits is not None and keep.any():
        xi = pts[:, 0].round().long().clamp(0, mask_logits.shape[-1] - 1)
        yi = pts[:, 1].round().long().clamp(0, mask_logits.shape[-2] - 1)
        keep &= mask_logits[yi, xi] > 0
    pts_np = pts[keep].cpu().numpy()
    score_np = score[keep].cpu().numpy()
    cls_np = cls[keep].cpu().numpy()
    kept = point_nms(pts_np, score_np, nms_distance)
    return Prompts(pts_np[kept].astype(np.float32), cls_np[kept].astype(np.int16), score_np[kept].astype(np.float32))
