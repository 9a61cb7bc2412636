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
def candidate_prompts(
    points: torch.Tensor, logits: torch.Tensor, mask_logits: torch.Tensor | None, size_hw: tuple[int, int], release: bool = False
) -> Prompts:
    """One image's anchors that name a nucleus, before NMS: `points` (A, 2), `logits` (A, C+1),
    `mask_logits` (H', W') or None.

    Keeps anchors whose argmax is not background, inside the unpadded image, and (when a
    foreground map is given) whose foreground logit at the point is > 0. `release`: as the
    authors' code does, points outside are clipped onto the image instead of dropped, and
    the foreground is read at the truncated pixel instead of the nearest.
    """
    prob = logits.float().softmax(-1)
    score, cls = prob[:, :-1].max(-1)
    keep = prob.argmax(-1) != prob.shape[-1] - 1
    h, w = size_hw
    pts = points.float()
    if release:
        pts = torch.stack([pts[:, 0].clamp(0, w - 1), pts[:, 1].clamp(0, h - 1)], 1)
    else:
        keep &= (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] <= h - 1)
    if mask_logits is not None and keep.any():
        at = pts.long() if release else pts.round().long()
        xi = at[:, 0].clamp(0, mask_logits.shape[-1] - 1)
        yi = at[:, 1].clamp(0, mask_logits.shape[-2] - 1)
        keep &= mask_logits[yi, xi] > 0
    return Prompts(pts[keep].cpu().numpy().astype(np.float32), cls[keep].cpu().numpy().astype(np.int16), score[keep].cpu().numpy().astype(np.float32))


def concat_prompts(parts: list[Prompts]) -> Prompts:
    if not parts:
        return Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int16), np.zeros(0, np.float32))
    return Prompts(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("points", "classes", "scores")))


def nms_prompts(prompts: Prompts, radius: float) -> Prompts:
    """One prompt per nucleus: greedy point NMS (see `point_nms`)."""
    kept = point_nms(prompts.points, prompts.scores, radius)
    return Prompts(prompts.points[kept], prompts.classes[kept], prompts.scores[kept])


def select_prompts(
    points: torch.Tensor,
    logits: torch.Tensor,
    mask_logits: torch.Tensor | None,
    size_hw: tuple[int, int],
    nms_distance: float,
    release: bool = False,
) -> Prompts:
    """One image's prompts: `candidate_prompts`, then point NMS at `nms_distance` px."""
    return nms_prompts(candidate_prompts(points, logits, mask_logits, size_hw, release), nms_distance)
