"""A typed run's per-class figures: nuclear size and who lies near whom (`class_summary` in the report).

Why: counts and densities per class say how much of each type there is; the next things a
pathologist asks of typed nuclei are their size (mean and median area, µm²) and their
neighbours, above all whether inflammatory cells reach the epithelium (the fraction of
inflammatory nuclei with an epithelial nucleus within 20 µm) or stay in the stroma.

Neighbours are taken centre to centre (the nuclei table's `centroid_x`, `centroid_y`, level-0
px, turned into µm by the slide's µm/px), among every nucleus the run kept. One KD-tree per
class (scipy's cKDTree) answers each nucleus's nearest-of-class-B query in log time, so a
slide of a million nuclei costs seconds, never all pairs. A nucleus is never its own
neighbour (within one class the second-nearest is asked for); two nuclei at the same centre
are each other's.

With `--regions`, each region's figures hold the nuclei whose prompt lies inside it (the same
rule as its counts, overlapping regions each counting theirs); their neighbours may lie in any
region, since a cell's surroundings do not stop at a drawn line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

NEAR_UM = 20.0
# The pathologist's first question of a typed slide, when the model has both classes (names compared lower-case)
HEADLINE = ("inflammatory", "epithelial")


def near_matrix(centroids: np.ndarray, classes: np.ndarray, n_classes: int, radius: float) -> np.ndarray:
    """(N, C) bool: whether nucleus i has a nucleus of class c (not itself) within `radius`
    (the centroids' units, distance <= radius)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(centroids, np.float64).reshape(-1, 2)
    cls = np.asarray(classes, np.int64).reshape(-1)
    out = np.zeros((len(xy), n_classes), bool)
    bound = radius * (1 + 1e-9) + 1e-9  # the query's bound is strict; distances are compared to `radius` below
    for c in range(n_classes):
        members = cls == c
        m = int(members.sum())
        if m == 0:
            continue
        tree = cKDTree(xy[members])
        others = ~members
        if others.any():
            d, _ = tree.query(xy[others], k=1, distance_upper_bound=bound)
            out[others, c] = d <= radius
        if m > 1:
            d, _ = tree.query(xy[members], k=2, distance_upper_bound=bound)
            out[members, c] = d[:, 1] <= radius  # the first is the nucleus itself
    return out


@dataclass
class ClassSummaryBuilder:
    """Collects the columns the summary needs from the run's parts (22 bytes a nucleus, plus one
    byte per region), then computes it once the slide is done."""

    class_names: Sequence[str]
    mpp: float
    region_labels: Sequence[str] | None = None
    near_um: float = NEAR_UM
    _centroids: list[np.ndarray] = field(default_factory=list)
    _classes: list[np.ndarray] = field(default_factory=list)
    _areas: list[np.ndarray] = field(default_factory=list)
    _inside: list[np.ndarray] = field(default_factory=list)

    @staticmethod
    def wanted(class_names: Sequence[str]) -> bool:
        """Only a typed model has classes to compare; an untyped run's report stays as it was."""
        return len(class_names) > 1

    def add(
        self, centroids: np.ndarray, classes: np.ndarray, areas_um2: np.ndarray, inside: np.ndarray | None = None
    ) -> None:
        """One part's nuclei; `inside` is its (N, R) region membership with --regions."""
        self._centroids.append(np.asarray(centroids, np.float64).reshape(-1, 2))
        self._classes.append(np.asarray(classes, np.int16).reshape(-1))
        self._areas.append(np.asarray(areas_um2, np.float32).reshape(-1))
        if self.region_labels is not None:
            n = len(self._classes[-1])
            held = np.zeros((n, len(self.region_labels)), bool) if inside is None else np.asarray(inside, bool)
            self._inside.append(held)

    def build(self) -> dict[str, Any]:
        """The report's `class_summary` (see docs/class_summary.md)."""
        names = list(self.class_names)
        k = len(names)
        xy = np.concatenate(self._centroids) if self._centroids else np.zeros((0, 2))
        cls = np.concatenate(self._classes).astype(np.int64) if self._classes else np.zeros(0, np.int64)
        areas = np.concatenate(self._areas).astype(np.float64) if self._areas else np.zeros(0)
        near = near_matrix(xy, cls, k, self.near_um / self.mpp)
        out: dict[str, Any] = {
            "near_um": self.near_um,
            "distance": "centroid to centroid (the table's centroid_x, centroid_y), among all nuclei of the run",
            **_figures(names, cls, areas, near, np.ones(len(cls), bool), self.near_um),
        }
        if self.region_labels is not None:
            inside = np.concatenate(self._inside) if self._inside else np.zeros((0, len(self.region_labels)), bool)
            out["regions"] = [
                {"index": j, "label": label, **_figures(names, cls, areas, near, inside[:, j], self.near_um)}
                for j, label in enumerate(self.region_labels)
            ]
        return out


def _figures(
    names: list[str], cls: np.ndarray, areas: np.ndarray, near: np.ndarray, rows: np.ndarray, near_um: float
) -> dict[str, Any]:
    """Per class: nuclei, mean and median area; per ordered pair: the share of the first class's
    nuclei (among `rows`) with one of the second within reach; the headline pair when present."""
    classes: dict[str, Any] = {}
    near_counts: dict[str, dict[str, int]] = {}
    near_fraction: dict[str, dict[str, float | None]] = {}
    for a, name in enumerate(names):
        sel = rows & (cls == a)
        n = int(sel.sum())
        a_areas = areas[sel]
        a_areas = a_areas[np.isfinite(a_areas)]
        classes[name] = {
            "nuclei": n,
            "mean_area_um2": round(float(a_areas.mean()), 2) if len(a_areas) else None,
            "median_area_um2": round(float(np.median(a_areas)), 2) if len(a_areas) else None,
        }
        hits = near[sel].sum(0) if n else np.zeros(len(names), np.int64)
        near_counts[name] = {b: int(hits[j]) for j, b in enumerate(names)}
        near_fraction[name] = {b: (round(int(hits[j]) / n, 4) if n else None) for j, b in enumerate(names)}
    return {
        "classes": classes, "near_counts": near_counts, "near_fraction": near_fraction,
        "headline": _headline(names, classes, near_counts, near_um),
    }


def _headline(
    names: list[str], classes: dict[str, Any], near_counts: dict[str, dict[str, int]], near_um: float
) -> dict[str, Any] | None:
    """The share of inflammatory nuclei within reach of an epithelial one, in words."""
    lower = {n.lower(): n for n in names}
    if not all(h in lower for h in HEADLINE):
        return None
    of, to = lower[HEADLINE[0]], lower[HEADLINE[1]]
    n, hit = classes[of]["nuclei"], near_counts[of][to]
    if n:
        text = f"{100 * hit / n:.0f}% of {of.lower()} nuclei ({hit:,} of {n:,}) lie within {near_um:g} µm of an {to.lower()} nucleus"
    else:
        text = f"no {of.lower()} nuclei found, so none within {near_um:g} µm of an {to.lower()} nucleus"
    fraction = round(hit / n, 4) if n else None
    return {"of": of, "near": to, "nuclei": n, "near_nuclei": hit, "fraction": fraction, "text": text}
