"""Prompt sets for SAM: one positive point plus its K nearest neighbours as negatives."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def knn_negatives(anchors: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each anchor's k nearest *other* anchors, -1 where fewer exist."""
    n = len(anchors)
    out = np.full((n, k), -1, np.int64)
    if k <= 0 or n <= 1:
        return out
    kk = min(k + 1, n)
    _, idx = cKDTree(anchors).query(anchors, k=kk)
    idx = np.asarray(idx).reshape(n, kk)
    for i in range(n):
        others = idx[i][idx[i] != i][:k]
        out[i, : len(others)] = others
    return out


def assemble_prompts(positives: np.ndarray, negative_pool: np.ndarray, negative_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SAM point prompts: coords (N, 1+k, 2) and labels (N, 1+k): 1 positive, 0 negative, -1 padding."""
    n, k = negative_idx.shape
    coords = np.zeros((n, 1 + k, 2), np.float32)
    labels = np.full((n, 1 + k), -1, np.int64)
    coords[:, 0] = positives
    labels[:, 0] = 1
    valid = negative_idx >= 0
    coords[:, 1:][valid] = negative_pool[negative_idx[valid]]
    labels[:, 1:][valid] = 0
    return coords, labels
