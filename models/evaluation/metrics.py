"""Nucleus metrics with HoVer-Net's conventions, so our numbers compare with published ones.

Instance metrics (AJI, PQ, PanNuke bPQ/mPQ) follow `metrics/stats_utils.py` of
vqdang/hover_net and the PanNuke evaluation script; point detection follows the
PromptNucSeg release (greedy matching in descending score). Where those scripts crash
(empty maps) we return the value their formula gives, or NaN where it is 0/0; each
docstring says which. Pairwise overlaps come from one contingency count over the pixels,
not per-pair masks, so a 1000x1000 Kumar image with ~700 nuclei scores in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

# HoVer-Net adds this to the union when choosing each GT's best prediction for AJI; kept so
# that near-ties (equal IoU, different sizes) resolve exactly as theirs do.
_AJI_PAIRING_EPS = 1.0e-6
# Above this many label pairs the dense contingency table is swapped for a sparse count.
_DENSE_PAIR_LIMIT = 1 << 24


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN (and no RuntimeWarning) when there are none."""
    arr = np.asarray(list(values), np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _as_label_map(inst: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(inst)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label map, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} holds negative labels (min {arr.min()}); labels must be 0 (background) or positive")
    return arr


def remap_label(inst: np.ndarray) -> np.ndarray:
    """Relabel instances 1..N in ascending order of their old ids (0 stays background).

    Same result as HoVer-Net's `remap_label(pred, by_size=False)`, which the metrics need
    because they index instances by label. Unlike HoVer-Net's, it also accepts a map with
    no background pixel. Returns int32.
    """
    arr = _as_label_map(inst, "label map")
    if arr.size == 0:
        return arr.astype(np.int32)
    top = int(arr.max())
    if top <= 4 * arr.size + 16:  # a lookup table: linear time, no sort
        present = np.zeros(top + 1, bool)
        present[arr.ravel()] = True
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64).astype(np.int32)
        lut[0] = 0
        return lut[arr]
    values, inverse = np.unique(arr, return_inverse=True)
    inverse = inverse.reshape(arr.shape).astype(np.int32)
    return inverse if values[0] == 0 else inverse + 1


@dataclass(frozen=True)
class InstanceOverlap:
    """Every (GT, prediction) pair that shares pixels, from two remapped label maps.

    `true_idx`/`pred_idx` are 0-based (label - 1); pairs with no common pixel are absent,
    which is all AJI and PQ need.
    """

    true_area: np.ndarray  # (T,) pixels per GT instance
    pred_area: np.ndarray  # (P,) pixels per predicted instance
    true_idx: np.ndarray  # (K,)
    pred_idx: np.ndarray  # (K,)
    inter: np.ndarray  # (K,) shared pixels, > 0

    @property
    def n_true(self) -> int:
        return len(self.true_area)

    @property
    def n_pred(self) -> int:
        return len(self.pred_area)

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.true_idx] + self.pred_area[self.pred_idx] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / self.union


def instance_overlap(true: np.ndarray, pred: np.ndarray) -> InstanceOverlap:
    """Remap both maps and count shared pixels of every overlapping pair in one pass."""
    t = remap_label(_as_label_map(true, "ground-truth map"))
    p = remap_label(_as_label_map(pred, "predicted map"))
    if t.shape != p.shape:
        raise ValueError(f"ground truth {t.shape} and prediction {p.shape} differ in shape")
    n_t = int(t.max()) if t.size else 0
    n_p = int(p.max()) if p.size else 0
    true_area = np.bincount(t.ravel(), minlength=n_t + 1)[1:].astype(np.float64)
    pred_area = np.bincount(p.ravel(), minlength=n_p + 1)[1:].astype(np.float64)
    both = (t > 0) & (p > 0)
    keys = t[both].astype(np.int64) * (n_p + 1) + p[both]
    if (n_t + 1) * (n_p + 1) <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(keys, minlength=(n_t + 1) * (n_p + 1))
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(keys, return_counts=True)
    return InstanceOverlap(
        true_area=true_area,
        pred_area=pred_area,
        true_idx=(keys // (n_p + 1) - 1).astype(np.int64),
        pred_idx=(keys % (n_p + 1) - 1).astype(np.int64),
        inter=counts.astype(np.float64),
    )


def aji_from_overlap(ov: InstanceOverlap) -> float:
    """AJI of precomputed overlaps; see `aji`."""
    if ov.n_true == 0 and ov.n_pred == 0:
        return float("nan")
    union = ov.union
    if len(ov.inter):
        score = ov.inter / (union + _AJI_PAIRING_EPS)
        # per GT: highest score first, then the lowest prediction id (np.argmax's tie rule)
        order = np.lexsort((ov.pred_idx, -score, ov.true_idx))
        first = np.flatnonzero(np.r_[True, np.diff(ov.true_idx[order]) != 0])
        chosen = order[first]
    else:
        chosen = np.zeros(0, np.int64)
    overall_inter = ov.inter[chosen].sum()
    overall_union = union[chosen].sum()
    true_paired = np.zeros(ov.n_true, bool)
    true_paired[ov.true_idx[chosen]] = True
    pred_paired = np.zeros(ov.n_pred, bool)
    pred_paired[ov.pred_idx[chosen]] = True
    overall_union += ov.true_area[~true_paired].sum() + ov.pred_area[~pred_paired].sum()
    return float(overall_inter / overall_union)


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index as distributed by MoNuSeg (HoVer-Net's `get_fast_aji`), not AJI+.

    Each GT instance is paired with the prediction of highest IoU (a prediction may serve
    several GTs, and is then counted in the union once per GT, the known over-penalty);
    AJI = sum of paired intersections / (sum of paired unions + areas of unpaired GT and of
    every prediction no GT chose). Empty cases: GT empty, prediction not -> 0.0; prediction
    empty, GT not -> 0.0 (HoVer-Net raises here; 0.0 is what its formula gives); both
    empty -> NaN (0/0; HoVer-Net raises).
    """
    return aji_from_overlap(instance_overlap(true, pred))


@dataclass(frozen=True)
class PQResult:
    """Panoptic quality of one image, with the counts needed to pool or audit it."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int
    paired_iou_sum: float


def pq_from_overlap(ov: InstanceOverlap, iou_threshold: float = 0.5) -> PQResult:
    """PQ of precomputed overlaps; see `pq`."""
    if iou_threshold < 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    iou = ov.iou
    if iou_threshold >= 0.5:  # IoU > 0.5 pairs are unique by construction
        keep = iou > iou_threshold
        paired_iou = iou[keep]
    elif len(iou):  # below 0.5 a GT may overlap several preds well: maximal unique pairing
        rows, row_of = np.unique(ov.true_idx, return_inverse=True)
        cols, col_of = np.unique(ov.pred_idx, return_inverse=True)
        dense = np.zeros((len(rows), len(cols)))
        dense[row_of, col_of] = iou
        r, c = linear_sum_assignment(-dense)
        paired_iou = dense[r, c]
        paired_iou = paired_iou[paired_iou > iou_threshold]
    else:
        paired_iou = np.zeros(0)
    tp = int(len(paired_iou))
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    iou_sum = float(paired_iou.sum())
    if tp + fp + fn == 0:
        nan = float("nan")
        return PQResult(nan, nan, nan, 0, 0, 0, 0.0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return PQResult(dq=dq, sq=sq, pq=dq * sq, tp=tp, fp=fp, fn=fn, paired_iou_sum=iou_sum)


def pq(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> PQResult:
    """Panoptic quality (HoVer-Net's `get_fast_pq`): DQ * SQ over unique pairs with IoU > threshold.

    DQ = TP / (TP + FP/2 + FN/2); SQ = mean IoU of the pairs; PQ = DQ * SQ. At a threshold
    >= 0.5 every pair above it is unique; below 0.5 pairs come from a maximal assignment,
    as in HoVer-Net. SQ is the exact mean (HoVer-Net divides by TP + 1e-6, so its SQ is at
    most 1e-6 relative lower). Empty cases: GT or prediction empty (not both) -> DQ = SQ =
    PQ = 0.0, as HoVer-Net; both empty -> all NaN (HoVer-Net raises ZeroDivisionError).
    """
    return pq_from_overlap(instance_overlap(true, pred), iou_threshold)


# --- PanNuke ---------------------------------------------------------------------------


def pannuke_bpq(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Binary PQ of one PanNuke image: PQ ignoring classes; NaN when the GT has no nucleus
    (the PanNuke script skips such images whatever was predicted)."""
    if not np.any(np.asarray(true_inst)):
        return float("nan")
    return pq(true_inst, pred_inst).pq


def pannuke_class_pq(
    true_inst: np.ndarray, true_type_map: np.ndarray, pred_inst: np.ndarray, pred_type_map: np.ndarray, n_classes: int
) -> np.ndarray:
    """PQ per class (classes 1..n_classes in the type maps, 0 = background) of one image.

    Class c's maps are the instance maps restricted to pixels of type c. A class absent
    from the GT is NaN, so predictions of a class the image does not have cost nothing
    (the PanNuke script's rule). Returns shape (n_classes,).
    """
    t_inst, p_inst = np.asarray(true_inst), np.asarray(pred_inst)
    t_type, p_type = np.asarray(true_type_map), np.asarray(pred_type_map)
    if not (t_inst.shape == t_type.shape == p_inst.shape == p_type.shape):
        raise ValueError(f"instance and type maps differ in shape: {t_inst.shape}, {t_type.shape}, {p_inst.shape}, {p_type.shape}")
    out = np.full(n_classes, np.nan)
    for c in range(1, n_classes + 1):
        t_c = np.where(t_type == c, t_inst, 0)
        if not np.any(t_c):
            continue
        out[c - 1] = pq(t_c, np.where(p_type == c, p_inst, 0)).pq
    return out


def pannuke_mpq(
    true_inst: np.ndarray, true_type_map: np.ndarray, pred_inst: np.ndarray, pred_type_map: np.ndarray, n_classes: int
) -> float:
    """Multi-class PQ of one image: the NaN-skipping mean of `pannuke_class_pq`; NaN when
    the GT has no nucleus of any class."""
    return _nanmean(pannuke_class_pq(true_inst, true_type_map, pred_inst, pred_type_map, n_classes))


def per_tissue_means(values: Sequence[float], tissues: Sequence[str]) -> dict[str, float]:
    """NaN-skipping mean of the per-image values of each tissue, keyed by tissue in sorted order."""
    if len(values) != len(tissues):
        raise ValueError(f"{len(values)} values but {len(tissues)} tissue names")
    vals = np.asarray(values, np.float64)
    names = np.asarray(list(tissues), dtype=object)
    return {t: _nanmean(vals[names == t]) for t in sorted(set(tissues))}


def tissue_average(values: Sequence[float], tissues: Sequence[str]) -> float:
    """PanNuke's reported number: mean within each tissue, then mean over tissues (NaNs skipped
    at both levels), so a tissue with many images does not outweigh the others."""
    return _nanmean(per_tissue_means(values, tissues).values())


# --- Point detection and classification -------------------------------------------------


@dataclass
class MatchCounts:
    """True/false positives and false negatives; add them to pool over a dataset."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "MatchCounts") -> "MatchCounts":
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        return f1_from_counts(self.tp, self.fp, self.fn)


@dataclass
class DetectionCounts(MatchCounts):
    """Class-agnostic detection counts plus, per class id, counts of matching that class only."""

    per_class: dict[int, MatchCounts] = field(default_factory=dict)

    def __add__(self, other: MatchCounts) -> "DetectionCounts":
        merged = dict(self.per_class)
        for c, m in getattr(other, "per_class", {}).items():
            merged[c] = merged.get(c, MatchCounts()) + m
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, merged)

    def __radd__(self, other: object) -> "DetectionCounts":
        if other == 0:  # lets sum() pool a list of counts
            return self
        return NotImplemented


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); NaN when there was nothing to find and nothing found."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else float("nan")


def greedy_point_matching(pred_points: np.ndarray, pred_scores: np.ndarray | None, true_points: np.ndarray, radius: float) -> np.ndarray:
    """For each prediction, the index of the GT point it matched, or -1.

    Predictions are taken in descending score (ties: input order); each takes the nearest
    GT not yet matched (ties: lowest GT index) if it lies within `radius` (inclusive),
    the PromptNucSeg release's `get_tp` rule.
    """
    pred = np.asarray(pred_points, np.float64).reshape(-1, 2)
    true = np.asarray(true_points, np.float64).reshape(-1, 2)
    matched = np.full(len(pred), -1, np.int64)
    if len(pred) == 0 or len(true) == 0:
        return matched
    scores = np.zeros(len(pred)) if pred_scores is None else np.asarray(pred_scores, np.float64).reshape(-1)
    if len(scores) != len(pred):
        raise ValueError(f"{len(pred)} predicted points but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    # the KD-tree only shortlists; the inclusive radius test uses the exact distance below
    candidates = cKDTree(true).query_ball_point(pred[order], r=radius * (1 + 1e-9) + 1e-9)
    taken = np.zeros(len(true), bool)
    for i, cand in zip(order, candidates):
        cand = np.asarray(sorted(cand), np.int64)
        cand = cand[~taken[cand]] if cand.size else cand
        if cand.size == 0:
            continue
        dist = np.sqrt(((true[cand] - pred[i]) ** 2).sum(axis=1))
        j = int(np.argmin(dist))
        if dist[j] <= radius:
            matched[i] = cand[j]
            taken[cand[j]] = True
    return matched


def _count(pred_points: np.ndarray, pred_scores: np.ndarray | None, true_points: np.ndarray, radius: float) -> MatchCounts:
    tp = int((greedy_point_matching(pred_points, pred_scores, true_points, radius) >= 0).sum())
    return MatchCounts(tp=tp, fp=len(pred_points) - tp, fn=len(true_points) - tp)


def detection_scores(
    true_points: np.ndarray,
    true_classes: np.ndarray | None,
    pred_points: np.ndarray,
    pred_classes: np.ndarray | None,
    pred_scores: np.ndarray | None,
    radius: float = 12.0,
) -> DetectionCounts:
    """Detection counts of one image, to be summed over a dataset before taking F1.

    Detection ignores classes. Per class c (every class in the GT or predictions), the
    predictions of class c are matched to the GT of class c alone, as the PromptNucSeg
    release does, so a point of the wrong class is both a class FP and a class FN.
    12 px at 0.25 um/px (~3 um) is the published radius. Points are (x, y) or (y, x),
    the same in both sets.
    """
    t_pts = np.asarray(true_points, np.float64).reshape(-1, 2)
    p_pts = np.asarray(pred_points, np.float64).reshape(-1, 2)
    scores = None if pred_scores is None else np.asarray(pred_scores, np.float64).reshape(-1)
    det = _count(p_pts, scores, t_pts, radius)
    per_class: dict[int, MatchCounts] = {}
    if true_classes is not None and pred_classes is not None:
        t_cls = np.asarray(true_classes).reshape(-1)
        p_cls = np.asarray(pred_classes).reshape(-1)
        if len(t_cls) != len(t_pts) or len(p_cls) != len(p_pts):
            raise ValueError(f"points and classes differ in length: GT {len(t_pts)} vs {len(t_cls)}, predicted {len(p_pts)} vs {len(p_cls)}")
        for c in sorted(set(t_cls.tolist()) | set(p_cls.tolist())):
            sel = p_cls == c
            per_class[int(c)] = _count(p_pts[sel], None if scores is None else scores[sel], t_pts[t_cls == c], radius)
    return DetectionCounts(det.tp, det.fp, det.fn, per_class)


def class_f1_scores(counts: DetectionCounts, classes: Iterable[int] | None = None) -> tuple[float, dict[int, float]]:
    """Per-class F1 from pooled counts and their mean over classes (the paper's class F1).

    A class with no GT and no prediction anywhere has F1 NaN and is left out of the mean
    (the release would count it as 0).
    """
    wanted = sorted(counts.per_class) if classes is None else list(classes)
    per = {int(c): counts.per_class.get(c, MatchCounts()).f1 for c in wanted}
    return _nanmean(per.values()), per


# --- HoVer-Net's type scores (F_d, accuracy, F_t) ----------------------------------------


def pair_points(true_points: np.ndarray, pred_points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HoVer-Net's `pair_coordinates`: a minimum-total-distance assignment (Hungarian) of
    predicted to GT points, pairs farther than `radius` (inclusive) dropped.

    Returns (paired (K, 2) of [GT index, prediction index], unpaired GT, unpaired predictions)."""
    t = np.asarray(true_points, np.float64).reshape(-1, 2)
    p = np.asarray(pred_points, np.float64).reshape(-1, 2)
    if len(t) == 0 or len(p) == 0:
        return np.zeros((0, 2), np.int64), np.arange(len(t)), np.arange(len(p))
    dist = np.sqrt(((t[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(dist)
    close = dist[rows, cols] <= radius
    paired = np.stack([rows[close], cols[close]], 1).astype(np.int64)
    return paired, np.setdiff1d(np.arange(len(t)), paired[:, 0]), np.setdiff1d(np.arange(len(p)), paired[:, 1])


@dataclass
class TypeCounts:
    """Pooled type counts over a dataset: `confusion[t, p]` counts paired nuclei of GT class t
    predicted as p; `unpaired_true[c]` / `unpaired_pred[c]` the unpaired GT / predictions of c.
    Add them over images, then score (HoVer-Net pools the pairs of all images the same way)."""

    confusion: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @classmethod
    def empty(cls, n_classes: int) -> "TypeCounts":
        return cls(np.zeros((n_classes, n_classes), np.int64), np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64))

    def __add__(self, other: "TypeCounts") -> "TypeCounts":
        return TypeCounts(self.confusion + other.confusion, self.unpaired_true + other.unpaired_true, self.unpaired_pred + other.unpaired_pred)


def type_counts(
    true_points: np.ndarray, true_classes: np.ndarray, pred_points: np.ndarray, pred_classes: np.ndarray, n_classes: int, radius: float = 12.0
) -> TypeCounts:
    """Type counts of one image (classes 0-based; a GT class < 0, unknown, is left out of the
    type counts, as HoVer-Net's non-exhaustive `ignore`, but still pairs)."""
    t_cls = np.asarray(true_classes, np.int64).reshape(-1)
    p_cls = np.asarray(pred_classes, np.int64).reshape(-1)
    if len(t_cls) != len(np.asarray(true_points).reshape(-1, 2)) or len(p_cls) != len(np.asarray(pred_points).reshape(-1, 2)):
        raise ValueError("points and classes differ in length")
    if (p_cls < 0).any() or (p_cls >= n_classes).any() or (t_cls >= n_classes).any():
        raise ValueError(f"classes must lie in 0..{n_classes - 1}")
    paired, lone_true, lone_pred = pair_points(true_points, pred_points, radius)
    out = TypeCounts.empty(n_classes)
    tp, pp = t_cls[paired[:, 0]], p_cls[paired[:, 1]]
    known = tp >= 0
    np.add.at(out.confusion, (tp[known], pp[known]), 1)
    lt = t_cls[lone_true]
    np.add.at(out.unpaired_true, lt[lt >= 0], 1)
    np.add.at(out.unpaired_pred, p_cls[lone_pred], 1)
    return out


def hovernet_type_scores(counts: TypeCounts) -> dict:
    """HoVer-Net's `run_nuclei_type_stat` on pooled counts: detection F_d, type accuracy of the
    paired nuclei, and per class F_t = 2 TP / (2 TP + 2 FP_t + 2 FN_t + FP_d + FN_d), where TP
    are paired nuclei of class c in both, FP_t / FN_t paired nuclei of class c on one side only,
    FP_d / FN_d unpaired predictions / GT of class c (weights 2, 2, 1, 1). NaN when 0/0."""
    conf = counts.confusion
    tp_d = int(conf.sum())
    fp_d, fn_d = int(counts.unpaired_pred.sum()), int(counts.unpaired_true.sum())
    per = {}
    for c in range(len(conf)):
        tp = int(conf[c, c])
        fp_t, fn_t = int(conf[:, c].sum()) - tp, int(conf[c, :].sum()) - tp
        denom = 2 * tp + 2 * fp_t + 2 * fn_t + int(counts.unpaired_pred[c]) + int(counts.unpaired_true[c])
        per[c] = 2 * tp / denom if denom else float("nan")
    return {
        "f_d": f1_from_counts(tp_d, fp_d, fn_d),
        "accuracy": float(np.trace(conf) / tp_d) if tp_d else float("nan"),
        "f_t": per,
        "mean_f_t": _nanmean(per.values()),
        "paired": tp_d,
        "unpaired_pred": fp_d,
        "unpaired_true": fn_d,
        "confusion": conf.tolist(),
    }


def type_map(instances: np.ndarray, instance_classes: dict[int, int]) -> np.ndarray:
    """The PanNuke-style type map of an instance map: class index + 1 under each instance, 0
    elsewhere (and under instances of unknown class)."""
    inst = np.asarray(instances)
    top = int(inst.max()) if inst.size else 0
    lut = np.zeros(top + 1, np.int16)
    for k, c in instance_classes.items():
        if 0 < int(k) <= top and c >= 0:
            lut[int(k)] = c + 1
    return lut[inst]


def split_count(ov: InstanceOverlap, inside: float = 0.5) -> int:
    """Ground-truth nuclei cut into pieces: those holding most (> `inside`) of the area of two or
    more predictions. Over-segmentation (several prompts on one nucleus) shows here, where PQ
    only sees a lost match."""
    mostly_in = ov.inter / ov.pred_area[ov.pred_idx] > inside
    per_true = np.bincount(ov.true_idx[mostly_in], minlength=ov.n_true)
    return int((per_true >= 2).sum())


#: nucleus-area bins (px) for detection by size: at 0.25 um/px, 200 px is 12.5 um², 800 px 50 um²
SIZE_BINS = (0, 200, 400, 800)


def size_bin_names(bins: tuple[int, ...] = SIZE_BINS) -> list[str]:
    return [f"{lo}-{hi}" for lo, hi in zip(bins, bins[1:])] + [f">={bins[-1]}"]


def detection_by_size(ov: InstanceOverlap, bins: tuple[int, ...] = SIZE_BINS) -> dict[str, dict[str, int]]:
    """Per area bin: ground-truth nuclei and those matched (IoU > 0.5, PQ's unique pairing), and
    predictions and those matched, binned by their own areas; so recall is read by true size,
    precision by predicted size."""
    matched = ov.iou > 0.5
    true_hit = np.zeros(ov.n_true, bool)
    pred_hit = np.zeros(ov.n_pred, bool)
    true_hit[ov.true_idx[matched]] = True
    pred_hit[ov.pred_idx[matched]] = True
    t_bin = np.digitize(ov.true_area, bins[1:])
    p_bin = np.digitize(ov.pred_area, bins[1:])
    out = {}
    for i, name in enumerate(size_bin_names(bins)):
        out[name] = {
            "n_true": int((t_bin == i).sum()),
            "true_matched": int((true_hit & (t_bin == i)).sum()),
            "n_pred": int((p_bin == i).sum()),
            "pred_matched": int((pred_hit & (p_bin == i)).sum()),
        }
    return out


def pooled_by_size(per_image: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, float]]:
    """Counts summed over images -> recall and precision per area bin."""
    totals: dict[str, dict[str, int]] = {}
    for image in per_image:
        for name, counts in image.items():
            into = totals.setdefault(name, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                into[k] += v
    return {
        name: {**c, "recall": c["true_matched"] / c["n_true"] if c["n_true"] else float("nan"), "precision": c["pred_matched"] / c["n_pred"] if c["n_pred"] else float("nan")}
        for name, c in totals.items()
    }


# --- A dataset of label-map pairs -------------------------------------------------------

IMAGE_METRICS = ("aji", "dq", "sq", "pq")


def score_label_maps(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """AJI, DQ, SQ, PQ of each (name, GT map, predicted map) and their means over images.

    Kumar/CPM-17 convention: per image, then the mean. NaN (an image with neither GT nor
    predicted nuclei) is skipped in the mean; `n_scored` says how many images counted.
    """
    images = []
    for name, true, pred in pairs:
        ov = instance_overlap(true, pred)
        r = pq_from_overlap(ov)
        images.append(
            {
                "name": name,
                "aji": aji_from_overlap(ov),
                "dq": r.dq,
                "sq": r.sq,
                "pq": r.pq,
                "n_true": ov.n_true,
                "n_pred": ov.n_pred,
                "tp": r.tp,
                "fp": r.fp,
                "fn": r.fn,
                "n_split": split_count(ov),
                "by_size": detection_by_size(ov),
            }
        )
    mean = {k: _nanmean(im[k] for im in images) for k in IMAGE_METRICS}
    n_scored = sum(1 for im in images if not np.isnan(im["pq"]))
    n_split = sum(im["n_split"] for im in images)
    by_size = pooled_by_size(im["by_size"] for im in images)
    return {"images": images, "mean": mean, "n_images": len(images), "n_scored": n_scored, "n_split": n_split, "by_size": by_size}
