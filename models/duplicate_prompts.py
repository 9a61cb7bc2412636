"""Two prompts on one nucleus: found from the masks the segmentor gives them alone.

The prompter's point NMS (11 px) is smaller than a large nucleus, so a big or elongated
nucleus can get two prompts. Decoded with each other as negative prompts, they cut the
nucleus in two. Decoded without negatives, both give the same whole-nucleus mask, each
holding the other's point: that is what marks them as one nucleus. Two neighbouring nuclei
do not pass this test, because each one's mask, even when it leaks, is centred on its own
nucleus, so the masks overlap far less than two masks of one nucleus do.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def close_prompts(points: np.ndarray, max_distance: float) -> np.ndarray:
    """Indices of prompts that have another prompt within `max_distance` px (the only ones
    that can be duplicates, so the only ones decoded twice)."""
    if len(points) < 2:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(max_distance, output_type="ndarray")
    return np.unique(pairs)


def duplicate_prompts(points: np.ndarray, scores: np.ndarray, masks: np.ndarray, max_distance: float, min_iou: float) -> dict[int, int]:
    """{duplicate: the prompt it yields to} among prompts with masks decoded without negatives.

    `points` (n, 2) in the masks' pixels, `scores` (n,) (higher wins), `masks` (n, S, S) bool.
    Two prompts are one nucleus when each lies in the other's mask and the masks' IoU is at
    least `min_iou`; groups joined through such pairs keep their best-scoring prompt.
    """
    n = len(points)
    if n < 2:
        return {}
    size_y, size_x = masks.shape[1:]
    xi = np.clip(np.round(points[:, 0]).astype(int), 0, size_x - 1)
    yi = np.clip(np.round(points[:, 1]).astype(int), 0, size_y - 1)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    flat = masks.reshape(n, -1)
    areas = flat.sum(1)
    for a, b in cKDTree(points).query_pairs(max_distance):
        if not (masks[a, yi[b], xi[b]] and masks[b, yi[a], xi[a]]):
            continue
        inter = np.count_nonzero(flat[a] & flat[b])
        if inter >= min_iou * (areas[a] + areas[b] - inter):
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    out: dict[int, int] = {}
    for members in groups.values():
        if len(members) > 1:
            keep = max(members, key=lambda i: (scores[i], -i))
            out.update({i: keep for i in members if i != keep})
    return out
