"""Type baselines for `evaluate --type-baseline`: what a typed model must clear by a margin.

Both keep the model's detected nuclei and masks and replace only their types, with rules that
learn from the training split alone (the data set's images that are not scored), never from
the ground truth of the images scored:

- `majority`: every nucleus gets the training split's most frequent class (the class prior and
  nothing about the nucleus).
- `knn`: each nucleus gets the majority class of its K nearest training nuclei in a classical
  five-number description of its mask: log area, elongation (the ratio of its second-moment
  axes) and mean R, G, B, each standardised on the training nuclei (size, shape and stain:
  what a pathologist's first glance and a feature-engineering pipeline would use).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.spatial import cKDTree

from promptnucseg.errors import FixableError

KNN_K = 15


class BaselineInputError(FixableError, ValueError):
    """A baseline that cannot be formed from the data as given; the message says the fix."""


def nucleus_features(image: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), features (N, 5): log area, elongation, mean R, G, B) of every instance."""
    inst = np.asarray(instances)
    ys, xs = np.nonzero(inst)
    if ys.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 5))
    ids, idx = np.unique(inst[ys, xs], return_inverse=True)
    area = np.bincount(idx).astype(np.float64)

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=v.astype(np.float64)) / area

    cx, cy = mean(xs), mean(ys)
    dx, dy = xs - cx[idx], ys - cy[idx]
    sxx, syy, sxy = mean(dx * dx), mean(dy * dy), mean(dx * dy)
    half_trace, det = (sxx + syy) / 2, sxx * syy - sxy**2
    root = np.sqrt(np.maximum(half_trace**2 - det, 0))
    elongation = np.sqrt((half_trace + root + 1e-6) / (np.maximum(half_trace - root, 0) + 1e-6))
    rgb = np.asarray(image)[ys, xs].astype(np.float64)
    feats = np.stack([np.log(area), np.log(elongation), mean(rgb[:, 0]), mean(rgb[:, 1]), mean(rgb[:, 2])], 1)
    return ids.astype(np.int64), feats


@dataclass
class TypeBaseline:
    """A fitted baseline: `classify(image, instance map, label ids)` -> a class per label."""

    name: str
    rule: str
    majority: int
    counts: list[int]
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    tree: cKDTree | None = None
    labels: np.ndarray | None = None

    def classify(self, image: np.ndarray, instances: np.ndarray, n: int) -> np.ndarray:
        """Classes of labels 1..n of `instances` (a label with no pixel left: the majority)."""
        out = np.full(n, self.majority, np.int64)
        if self.tree is None or n == 0:
            return out
        ids, feats = nucleus_features(image, instances)
        if len(ids):
            _, near = self.tree.query((feats - self.mean) / self.std, k=min(KNN_K, len(self.labels)))
            near = np.asarray(near).reshape(len(ids), -1)
            votes = np.apply_along_axis(lambda r: np.bincount(self.labels[r], minlength=len(self.counts)), 1, near)
            out[ids - 1] = votes.argmax(1)
        return out

    def describe(self, class_names: Sequence[str]) -> dict[str, Any]:
        out = {"name": self.name, "rule": self.rule, "training_class_counts": dict(zip(class_names, self.counts))}
        if self.tree is None:
            out["class"] = class_names[self.majority]
        else:
            out["k"] = KNN_K
        return out


def fit_baseline(name: str, dataset: Any, held_out: Sequence[int]) -> TypeBaseline:
    """The baseline `name` learnt from the data set's images outside `held_out`."""
    rest = sorted(set(range(len(dataset))) - set(held_out))
    if not rest:
        raise BaselineInputError(dataset.root, "--type-baseline needs a training split", "choose the held-out images with --images; the others are the training split")
    n_classes = len(dataset.class_names)
    counts = np.zeros(n_classes, np.int64)
    feats, labels = [], []
    for i in rest:
        sample = dataset[i]
        classes = sample.instance_classes or {}
        np.add.at(counts, [c for c in classes.values() if c >= 0], 1)
        if name == "knn":
            ids, f = nucleus_features(sample.image, sample.instances)
            cls = np.array([classes.get(int(k), -1) for k in ids], np.int64)
            feats.append(f[cls >= 0])
            labels.append(cls[cls >= 0])
    majority = int(np.argmax(counts))
    if name == "majority":
        return TypeBaseline(name, "every detected nucleus gets the most frequent GT class of the training split (the images not scored); detection and masks are the model's", majority, counts.tolist())
    if name != "knn":
        raise BaselineInputError(None, f"no type baseline named {name!r}", "use majority or knn")
    x, y = np.concatenate(feats), np.concatenate(labels)
    mean, std = x.mean(0), x.std(0) + 1e-9
    return TypeBaseline(
        name, f"each detected nucleus gets the majority class of its {KNN_K} nearest training-split GT nuclei in (log area, log elongation, mean R, G, B), "
        "standardised on the training nuclei; detection and masks are the model's", majority, counts.tolist(), mean, std, cKDTree((x - mean) / std), y,
    )
