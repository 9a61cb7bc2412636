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
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree


def close_prompts(points: np.ndarray, max_distance: float) -> np.ndarray:
    """Indices of prompts that have another prompt within `max_distance` px (the only ones
    that can be duplicates, so the only ones decoded twice)."""
    if len(points) < 2:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(max_distance, output_type="ndarray")
    return np.unique(pairs)


def touching_pairs(masks: dict[int, np.ndarray], points: np.ndarray, origin: tuple[int, int], max_distance: float) -> list[int]:
    """Prompts (sorted) with a neighbour within `max_distance` whose mask, decoded with
    negatives, touches theirs: one nucleus cut in two gives two touching halves, so only these
    need decoding again. `masks` {prompt: (S, S) bool}; `points` all prompts in tile px."""
    ids = sorted(masks)
    local = points[ids] - np.asarray(origin, np.float32)
    size_y, size_x = masks[ids[0]].shape
    reach = int(np.ceil(max_distance))
    out: set[int] = set()
    for a, b in cKDTree(local).query_pairs(max_distance):
        (xa, ya), (xb, yb) = local[a].astype(int), local[b].astype(int)
        y0, y1 = max(min(ya, yb) - reach, 0), min(max(ya, yb) + reach + 1, size_y)
        x0, x1 = max(min(xa, xb) - reach, 0), min(max(xa, xb) + reach + 1, size_x)
        if y0 >= y1 or x0 >= x1:
            continue
        ma, mb = masks[ids[a]][y0:y1, x0:x1], masks[ids[b]][y0:y1, x0:x1]
        if (binary_dilation(ma) & mb).any():
            out.update((ids[a], ids[b]))
    return sorted(out)


def duplicate_prompts(points: np.ndarray, scores: np.ndarray, masks: np.ndarray, max_distance: float, min_iou: float) -> dict[int, int]:
    """{duplicate: the prompt it yields to} among prompts with masks decoded without negatives.

    `points` (n, 2) in the masks' pixels, `scores` (n,) (higher wins), `masks` (n, S, S) bool.
    Two prompts are one nucleus when each lies in the other's mask and the masks' IoU is at
    least `min_iou`; groups joined through such pairs keep their best-scoring prompt. The IoU
    is taken in a box of `max_distance` around the pair: a nucleus' masks lie there, and
    counting whole windows for every pair would cost more than decoding them.
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

    reach = int(np.ceil(max_distance))
    for a, b in cKDTree(points).query_pairs(max_distance):
        if not (masks[a, yi[b], xi[b]] and masks[b, yi[a], xi[a]]):
            continue
        y0, y1 = max(min(yi[a], yi[b]) - reach, 0), min(max(yi[a], yi[b]) + reach + 1, size_y)
        x0, x1 = max(min(xi[a], xi[b]) - reach, 0), min(max(xi[a], xi[b]) + reach + 1, size_x)
        ma, mb = masks[a, y0:y1, x0:x1], masks[b, y0:y1, x0:x1]
        inter = np.count_nonzero(ma & mb)
        if inter >= min_iou * np.count_nonzero(ma | mb):
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
