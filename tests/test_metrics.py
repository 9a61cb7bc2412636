"""Metrics on hand-made label maps whose right answers are worked out in the comments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from promptnucseg.models.evaluation.metrics import (
    DetectionCounts,
    MatchCounts,
    TypeCounts,
    aji,
    class_f1_scores,
    detection_scores,
    f1_from_counts,
    hovernet_type_scores,
    instance_overlap,
    pair_points,
    pannuke_bpq,
    pannuke_class_pq,
    pannuke_mpq,
    per_tissue_means,
    pq,
    remap_label,
    score_label_maps,
    split_count,
    tissue_average,
    type_counts,
    type_map,
)
from conftest import HE_CELLS, he_labels


def box(shape, *rects):
    """A label map with rectangle i+1 = rects[i] = (label, y0, y1, x0, x1), half-open."""
    m = np.zeros(shape, np.int32)
    for label, y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = label
    return m


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# --- remap_label -------------------------------------------------------------------------


def test_remap_label_keeps_order_and_background():
    m = np.array([[0, 5, 5], [9, 0, 2]])
    assert remap_label(m).tolist() == [[0, 2, 2], [3, 0, 1]]
    assert remap_label(m).dtype == np.int32


def test_remap_label_huge_ids_and_no_background():
    m = np.array([[2**30, 7], [7, 2**30]], np.int64)  # ids too large for a lookup table
    assert remap_label(m).tolist() == [[2, 1], [1, 2]]
    assert remap_label(np.zeros((2, 2), np.uint16)).tolist() == [[0, 0], [0, 0]]


def test_remap_label_rejects_negative_and_float():
    with pytest.raises(ValueError, match="negative"):
        remap_label(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        remap_label(np.array([[0.0, 1.0]]))


# --- AJI and PQ --------------------------------------------------------------------------


def test_perfect_prediction_scores_one_whatever_the_ids():
    gt = box((12, 12), (1, 0, 4, 0, 5), (2, 0, 4, 6, 11), (3, 6, 10, 0, 10))
    pred = box((12, 12), (7, 0, 4, 0, 5), (3, 0, 4, 6, 11), (9, 6, 10, 0, 10))
    r = pq(gt, pred)
    assert aji(gt, pred) == 1.0
    assert (r.dq, r.sq, r.pq, r.tp, r.fp, r.fn) == (1.0, 1.0, 1.0, 3, 0, 0)


def test_one_nucleus_split_in_two():
    # GT: one 4x10 nucleus (40 px). Prediction: left 4x6 (24 px) and right 4x4 (16 px).
    # IoUs 24/40 = 0.6 and 16/40 = 0.4: one pair (TP 1), the right half is an FP.
    # DQ = 1 / (1 + 0.5) = 2/3, SQ = 0.6, PQ = 0.4.
    # AJI: GT pairs with the left part (inter 24, union 40); the right part is unpaired,
    # its 16 px join the union: 24 / 56 = 3/7.
    gt = box((4, 10), (1, 0, 4, 0, 10))
    pred = box((4, 10), (1, 0, 4, 0, 6), (2, 0, 4, 6, 10))
    r = pq(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.dq == approx(2 / 3) and r.sq == approx(0.6) and r.pq == approx(0.4)
    assert aji(gt, pred) == approx(3 / 7)
    assert split_count(instance_overlap(gt, pred)) == 1


def test_split_count_needs_two_pieces_mostly_inside_one_nucleus():
    gt = box((4, 10), (1, 0, 4, 0, 10))
    assert split_count(instance_overlap(gt, gt)) == 0
    # one piece inside, the other mostly outside (4 of its 12 px in the nucleus): not a split
    wide = np.zeros((4, 18), np.int32)
    wide[:, :10] = gt
    pred = box((4, 18), (1, 0, 4, 0, 6), (2, 0, 4, 9, 12))
    assert split_count(instance_overlap(wide, pred)) == 0


def test_two_nuclei_merged_into_one():
    # GT: 4x6 (24 px) and 4x4 (16 px) side by side. Prediction: one 4x10 (40 px).
    # IoUs 0.6 and 0.4: TP 1, FN 1 -> DQ 2/3, SQ 0.6, PQ 0.4.
    # AJI (not AJI+): both GTs pick the merged prediction, so it is counted twice:
    # inter 24 + 16 = 40, union 40 + 40 = 80 -> 0.5.
    gt = box((4, 10), (1, 0, 4, 0, 6), (2, 0, 4, 6, 10))
    pred = box((4, 10), (1, 0, 4, 0, 10))
    r = pq(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.dq == approx(2 / 3) and r.sq == approx(0.6) and r.pq == approx(0.4)
    assert aji(gt, pred) == approx(0.5)


def test_shifted_nucleus_around_iou_one_half():
    # GT: rows 0-9, cols 0-29 (300 px). Prediction: the same box shifted 10 columns right:
    # inter 10*20 = 200, union 400, IoU exactly 0.5 -> NOT a pair (PQ needs IoU > 0.5).
    gt = box((10, 42), (1, 0, 10, 0, 30))
    shifted = box((10, 42), (1, 0, 10, 10, 40))
    r = pq(gt, shifted)
    assert (r.tp, r.fp, r.fn, r.pq) == (0, 1, 1, 0.0)
    # One more predicted pixel inside the GT (col 9): inter 201, union 400 -> 0.5025, a pair.
    above = shifted.copy()
    above[0, 9] = 1
    r = pq(gt, above)
    assert (r.tp, r.fp, r.fn) == (1, 0, 0) and r.sq == approx(201 / 400) and r.pq == approx(201 / 400)
    # One predicted pixel removed outside the GT (col 35): 200/399 = 0.50125, a pair.
    removed = shifted.copy()
    removed[0, 35] = 0
    r = pq(gt, removed)
    assert r.tp == 1 and r.sq == approx(200 / 399)
    # One predicted pixel added outside the GT (col 40): 200/401 = 0.4988, not a pair.
    below = shifted.copy()
    below[0, 40] = 1
    r = pq(gt, below)
    assert (r.tp, r.fp, r.fn, r.dq) == (0, 1, 1, 0.0)
    # AJI has no threshold: exact 0.5 box -> 200 / 400.
    assert aji(gt, shifted) == approx(0.5)


def test_missed_nucleus():
    # GT: 20 px and 30 px; prediction finds the first exactly.
    # TP 1, FN 1: DQ = 1/1.5 = 2/3, SQ 1, PQ 2/3. AJI = 20 / (20 + 30 unpaired GT) = 0.4.
    gt = box((10, 10), (1, 0, 4, 0, 5), (2, 5, 10, 0, 6))
    pred = box((10, 10), (1, 0, 4, 0, 5))
    r = pq(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.dq == approx(2 / 3) and r.sq == 1.0 and r.pq == approx(2 / 3)
    assert aji(gt, pred) == approx(0.4)


def test_false_positive():
    # The same maps swapped: FP 1 instead of FN 1; AJI = 20 / (20 + 30 unpaired pred) = 0.4.
    gt = box((10, 10), (1, 0, 4, 0, 5))
    pred = box((10, 10), (1, 0, 4, 0, 5), (2, 5, 10, 0, 6))
    r = pq(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.pq == approx(2 / 3)
    assert aji(gt, pred) == approx(0.4)


def test_empty_ground_truth():
    # No GT, one predicted nucleus: AJI = 0 / 20 = 0; DQ = 0 / (0 + 0.5) = 0, SQ = PQ = 0.
    gt = np.zeros((10, 10), np.int32)
    pred = box((10, 10), (1, 0, 4, 0, 5))
    r = pq(gt, pred)
    assert aji(gt, pred) == 0.0
    assert (r.dq, r.sq, r.pq, r.tp, r.fp, r.fn) == (0.0, 0.0, 0.0, 0, 1, 0)


def test_empty_prediction():
    # One GT nucleus, nothing predicted: HoVer-Net's AJI raises here; its formula gives
    # 0 / 20 = 0, which we return. PQ: FN 1 -> 0.
    gt = box((10, 10), (1, 0, 4, 0, 5))
    pred = np.zeros((10, 10), np.int32)
    r = pq(gt, pred)
    assert aji(gt, pred) == 0.0
    assert (r.dq, r.sq, r.pq, r.tp, r.fp, r.fn) == (0.0, 0.0, 0.0, 0, 0, 1)


def test_both_empty_is_nan():
    # Nothing to find and nothing found: 0/0, NaN (HoVer-Net raises), skipped by means.
    empty = np.zeros((10, 10), np.int32)
    r = pq(empty, empty)
    assert math.isnan(aji(empty, empty))
    assert math.isnan(r.dq) and math.isnan(r.sq) and math.isnan(r.pq)
    assert (r.tp, r.fp, r.fn) == (0, 0, 0)


def test_aji_and_pq_on_three_nuclei_by_hand():
    # GT (10x16): A rows 0-3 cols 0-4 (20 px), B rows 0-3 cols 6-11 (24 px),
    #             C rows 6-9 cols 0-9 (40 px).
    # Pred: P1 rows 0-3 cols 0-7 (32 px: all of A and 8 px of B),
    #       P2 rows 0-3 cols 8-11 (16 px, inside B), P3 rows 6-9 cols 0-4 (20 px, inside C),
    #       P4 rows 7-8 cols 12-14 (6 px, touching nothing).
    # IoU: A-P1 20/32 = .625; B-P1 8/48; B-P2 16/24 = .667; C-P3 20/40 = .5.
    # AJI: A->P1 (20/32), B->P2 (16/24), C->P3 (20/40); P4 unpaired adds 6:
    #      (20 + 16 + 20) / (32 + 24 + 40 + 6) = 56 / 102.
    # PQ: pairs > 0.5 are A-P1 and B-P2 (C-P3 is exactly 0.5): TP 2, FP 2 (P3, P4), FN 1 (C).
    #     DQ = 2 / (2 + 1 + 0.5) = 4/7, SQ = (0.625 + 2/3) / 2, PQ = DQ * SQ.
    gt = box((10, 16), (1, 0, 4, 0, 5), (2, 0, 4, 6, 12), (3, 6, 10, 0, 10))
    pred = box((10, 16), (1, 0, 4, 0, 8), (2, 0, 4, 8, 12), (3, 6, 10, 0, 5), (4, 7, 9, 12, 15))
    assert aji(gt, pred) == approx(56 / 102)
    r = pq(gt, pred)
    sq = (0.625 + 2 / 3) / 2
    assert (r.tp, r.fp, r.fn) == (2, 2, 1)
    assert r.dq == approx(4 / 7) and r.sq == approx(sq) and r.pq == approx(4 / 7 * sq)
    assert r.paired_iou_sum == approx(0.625 + 2 / 3)


def test_aji_tie_between_equal_iou_predictions_goes_to_the_larger_one():
    # GT rows 0-1 cols 0-3 (8 px). P1 = row 0 cols 0-1 (2 px inside): IoU 2/8 = 0.25.
    # P2 = row 1 cols 0-11 (12 px, 4 inside): IoU 4/16 = 0.25, the same. HoVer-Net ranks by
    # inter / (union + 1e-6), which prefers P2 (4/16.000001 > 2/8.000001):
    # AJI = 4 / (16 + 2 for the unpaired P1) = 4/18 (picking P1 would give 2/20).
    gt = box((3, 12), (1, 0, 2, 0, 4))
    pred = box((3, 12), (1, 0, 1, 0, 2), (2, 1, 2, 0, 12))
    assert aji(gt, pred) == approx(4 / 18)


def test_pq_below_one_half_uses_a_unique_assignment():
    # GT: 4x10 (40 px). Pred: left 4x6 and right 4x4, IoU 0.6 and 0.4. At threshold 0.3 both
    # clear it, but a GT gets one partner: TP 1 (IoU 0.6), FP 1.
    gt = box((4, 10), (1, 0, 4, 0, 10))
    pred = box((4, 10), (1, 0, 4, 0, 6), (2, 0, 4, 6, 10))
    r = pq(gt, pred, iou_threshold=0.3)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0) and r.sq == approx(0.6)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        pq(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


def test_overlap_table_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, (40, 40)) * 3  # non-consecutive ids
    pred = rng.integers(0, 5, (40, 40)) + 10 * (rng.random((40, 40)) < 0.5)
    ov = instance_overlap(gt, pred)
    t, p = remap_label(gt), remap_label(pred)
    for i in range(1, t.max() + 1):
        for j in range(1, p.max() + 1):
            inter = np.sum((t == i) & (p == j))
            hit = (ov.true_idx == i - 1) & (ov.pred_idx == j - 1)
            assert ov.inter[hit].sum() == inter and hit.sum() == (inter > 0)
            if inter:
                assert ov.union[hit][0] == np.sum((t == i) | (p == j))


def test_a_real_label_map_against_itself_and_a_damaged_copy():
    path = he_labels(HE_CELLS)  # the suite's own real label map (DSB-2018, 362 nuclei)
    import tifffile

    gt = tifffile.imread(path).astype(np.int32)
    n = len(np.unique(gt)) - 1
    r = pq(gt, gt)
    assert aji(gt, gt) == 1.0 and (r.tp, r.fp, r.fn, r.pq) == (n, 0, 0, 1.0)
    eroded = np.where(np.roll(gt, 1, axis=0) == gt, gt, 0)  # strip each nucleus's top row
    r = pq(gt, eroded)
    assert 0.5 < aji(gt, eroded) < 1.0 and 0.5 < r.sq < 1.0 and r.fn == n - r.tp


# --- PanNuke -----------------------------------------------------------------------------


def test_mpq_skips_a_class_absent_from_the_ground_truth():
    # GT: A (class 1) and B (class 2). Prediction: A and B exact, plus an FP C of class 3.
    # Class PQ: [1, 1, NaN (no class-3 GT, so C costs nothing)] -> mPQ 1.
    # bPQ ignores classes: TP 2, FP 1 -> DQ 2/2.5 = 0.8, SQ 1 -> 0.8.
    gt = box((10, 10), (1, 0, 3, 0, 3), (2, 5, 8, 5, 8))
    gt_type = box((10, 10), (1, 0, 3, 0, 3), (2, 5, 8, 5, 8))
    pred = box((10, 10), (1, 0, 3, 0, 3), (2, 5, 8, 5, 8), (3, 0, 2, 7, 9))
    pred_type = box((10, 10), (1, 0, 3, 0, 3), (2, 5, 8, 5, 8), (3, 0, 2, 7, 9))
    per = pannuke_class_pq(gt, gt_type, pred, pred_type, 3)
    assert per[:2].tolist() == [1.0, 1.0] and math.isnan(per[2])
    assert pannuke_mpq(gt, gt_type, pred, pred_type, 3) == 1.0
    assert pannuke_bpq(gt, pred) == approx(0.8)
    # B predicted as class 1: class 1 gets A (TP) and B (FP) -> PQ 2/3; class 2 has B and
    # no prediction -> 0; class 3 NaN. mPQ = (2/3 + 0) / 2 = 1/3.
    wrong = np.where(pred_type == 2, 1, pred_type)
    assert pannuke_mpq(gt, gt_type, pred, wrong, 3) == approx(1 / 3)


def test_pannuke_empty_ground_truth_is_nan():
    empty = np.zeros((6, 6), np.int32)
    pred = box((6, 6), (1, 0, 2, 0, 2))
    assert math.isnan(pannuke_bpq(empty, pred))
    assert math.isnan(pannuke_mpq(empty, empty, pred, pred, 5))
    assert pannuke_bpq(pred, empty) == 0.0  # GT present, nothing found


def test_tissue_average_weighs_tissues_not_images():
    # Tissue a: 1, 1, 1 -> 1. Tissue b: 0, NaN -> 0. Average over tissues 0.5
    # (the mean over images would be 0.75).
    values = [1.0, 1.0, 1.0, 0.0, float("nan")]
    tissues = ["a", "a", "a", "b", "b"]
    assert per_tissue_means(values, tissues) == {"a": 1.0, "b": 0.0}
    assert tissue_average(values, tissues) == 0.5
    with pytest.raises(ValueError):
        tissue_average([1.0], ["a", "b"])


# --- detection ---------------------------------------------------------------------------


def test_detection_radius_is_inclusive():
    gt = np.array([[0.0, 0.0]])
    c = detection_scores(gt, None, np.array([[12.0, 0.0]]), None, np.array([0.9]), radius=12.0)
    assert (c.tp, c.fp, c.fn) == (1, 0, 0)
    c = detection_scores(gt, None, np.array([[12.01, 0.0]]), None, np.array([0.9]), radius=12.0)
    assert (c.tp, c.fp, c.fn) == (0, 1, 1)
    c = detection_scores(gt, None, np.array([[0.0, 11.0]]), None, np.array([0.9]), radius=11.0)
    assert c.tp == 1


def test_detection_is_greedy_in_descending_score():
    # GT g0 = (0, 0), g1 = (20, 0). pA = (10, 0) is 10 px from both; pB = (2, 0).
    # pA first (score .9): tie, takes g0 (lowest index); pB then has only g1 at 18 px > 12:
    # TP 1, FP 1, FN 1, although an optimal matching would pair both.
    gt = np.array([[0.0, 0.0], [20.0, 0.0]])
    pred = np.array([[10.0, 0.0], [2.0, 0.0]])
    c = detection_scores(gt, None, pred, None, np.array([0.9, 0.5]))
    assert (c.tp, c.fp, c.fn) == (1, 1, 1) and c.f1 == approx(0.5)
    # pB first: it takes g0, then pA takes g1 at 10 px: TP 2.
    c = detection_scores(gt, None, pred, None, np.array([0.5, 0.9]))
    assert (c.tp, c.fp, c.fn) == (2, 0, 0) and c.f1 == 1.0


def test_class_f1_matches_within_each_class_and_pools_over_images():
    # GT g0 (0,0) class 1, g1 (30,0) class 2. Pred p (1,0) class 2 (.9), q (30,1) class 2 (.8).
    # Detection: p-g0, q-g1: TP 2. Class 1: no prediction, FN 1 -> F1 0.
    # Class 2: p is 29 px from g1 (FP), q-g1 (TP) -> F1 = 2/(2+1) = 2/3. Mean 1/3.
    gt, gt_cls = np.array([[0.0, 0.0], [30.0, 0.0]]), np.array([1, 2])
    pred, pred_cls = np.array([[1.0, 0.0], [30.0, 1.0]]), np.array([2, 2])
    c = detection_scores(gt, gt_cls, pred, pred_cls, np.array([0.9, 0.8]))
    assert (c.tp, c.fp, c.fn) == (2, 0, 0)
    assert c.per_class[1] == MatchCounts(0, 0, 1) and c.per_class[2] == MatchCounts(1, 1, 0)
    mean, per = class_f1_scores(c)
    assert per == {1: 0.0, 2: approx(2 / 3)} and mean == approx(1 / 3)
    # Pooling: a second image with one exact class-1 hit. Pooled class 1: TP 1, FN 1 -> 2/3.
    c2 = detection_scores(np.array([[5.0, 5.0]]), np.array([1]), np.array([[5.0, 5.0]]), np.array([1]), np.array([0.7]))
    pooled = sum([c, c2])
    assert isinstance(pooled, DetectionCounts) and (pooled.tp, pooled.fp, pooled.fn) == (3, 0, 0)
    assert pooled.per_class[1] == MatchCounts(1, 0, 1)
    mean, per = class_f1_scores(pooled)
    assert mean == approx(2 / 3)  # (2/3 + 2/3) / 2
    # A class never seen anywhere is NaN and left out of the mean.
    mean, per = class_f1_scores(pooled, classes=[1, 2, 3])
    assert math.isnan(per[3]) and mean == approx(2 / 3)


def test_f1_from_counts():
    assert f1_from_counts(3, 1, 2) == approx(6 / 9)
    assert f1_from_counts(0, 2, 0) == 0.0
    assert math.isnan(f1_from_counts(0, 0, 0))


def test_detection_with_no_points():
    none = np.zeros((0, 2))
    c = detection_scores(none, None, np.array([[1.0, 1.0]]), None, np.array([0.5]))
    assert (c.tp, c.fp, c.fn) == (0, 1, 0)
    c = detection_scores(np.array([[1.0, 1.0]]), None, none, None, np.zeros(0))
    assert (c.tp, c.fp, c.fn) == (0, 0, 1)


# --- dataset-level scoring ---------------------------------------------------------------


def test_score_label_maps_means_over_images_and_skips_nan():
    gt = box((4, 10), (1, 0, 4, 0, 10))
    split = box((4, 10), (1, 0, 4, 0, 6), (2, 0, 4, 6, 10))
    empty = np.zeros((4, 10), np.int32)
    out = score_label_maps([("perfect", gt, gt), ("split", gt, split), ("blank", empty, empty)])
    assert [im["name"] for im in out["images"]] == ["perfect", "split", "blank"]
    assert out["n_images"] == 3 and out["n_scored"] == 2
    # means over the two scored images: AJI (1 + 3/7)/2, PQ (1 + 0.4)/2
    assert out["mean"]["aji"] == approx((1 + 3 / 7) / 2)
    assert out["mean"]["pq"] == approx(0.7)
    assert out["images"][1]["n_pred"] == 2 and out["images"][1]["fp"] == 1
    assert [im["n_split"] for im in out["images"]] == [0, 1, 0] and out["n_split"] == 1


def test_hovernet_pairing_is_a_minimum_total_distance_assignment():
    # greedy nearest-first would give the prediction at 6 the GT at 10 and leave the one at 16
    # without a partner within 12 px; HoVer-Net's Hungarian pairing pairs both (6 px each)
    paired, lone_true, lone_pred = pair_points([[0, 0], [10, 0]], [[6, 0], [16, 0]], 12)
    assert sorted(map(tuple, paired.tolist())) == [(0, 0), (1, 1)] and len(lone_true) == len(lone_pred) == 0
    paired, lone_true, lone_pred = pair_points([[0, 0]], [[12, 0], [30, 0]], 12)  # radius inclusive
    assert paired.tolist() == [[0, 0]] and lone_pred.tolist() == [1]
    assert len(pair_points(np.zeros((0, 2)), [[1, 1]], 12)[0]) == 0


def test_hovernet_type_scores_by_hand():
    # GT: A class 0, B 1, C 1, D 0 (nothing near it), F 1. Predictions: on A as 0, on B as 0
    # (wrong), on C as 1, on F as 1, and E far away as 1.
    true = [[0, 0], [100, 0], [200, 0], [300, 0], [400, 0]]
    true_cls = [0, 1, 1, 0, 1]
    pred = [[1, 0], [101, 0], [201, 0], [401, 0], [900, 900]]
    pred_cls = [0, 0, 1, 1, 1]
    counts = type_counts(true, true_cls, pred, pred_cls, 2)
    assert counts.confusion.tolist() == [[1, 0], [1, 2]]
    assert counts.unpaired_true.tolist() == [1, 0] and counts.unpaired_pred.tolist() == [0, 1]
    got = hovernet_type_scores(counts)
    # class 0: TP 1, FP_t 1 (B), FN_d 1 (D): 2 / (2 + 2 + 1); class 1: TP 2, FN_t 1 (B), FP_d 1 (E): 4 / (4 + 2 + 1)
    assert got["f_t"][0] == approx(2 / 5) and got["f_t"][1] == approx(4 / 7)
    assert got["mean_f_t"] == approx((2 / 5 + 4 / 7) / 2)
    assert got["f_d"] == approx(8 / 10) and got["accuracy"] == approx(3 / 4)
    # pooled over images exactly as one image holding both: counts add
    twice = hovernet_type_scores(counts + counts)
    assert twice["f_t"] == got["f_t"] and twice["paired"] == 2 * got["paired"]
    # a GT nucleus of unknown class (-1) still pairs but is not typed
    some = type_counts(true, [0, -1, 1, 0, 1], pred, pred_cls, 2)
    assert some.confusion.sum() == 3 and some.unpaired_pred.sum() == 1
    assert math.isnan(hovernet_type_scores(TypeCounts.empty(2))["f_t"][0])
    with pytest.raises(ValueError, match="classes must lie"):
        type_counts(true, true_cls, pred, [0, 0, 1, 1, 2], 2)


def test_type_map_paints_each_instance_with_its_class():
    inst = box((6, 6), (3, 0, 2, 0, 2), (7, 3, 5, 3, 5), (9, 0, 1, 5, 6))
    got = type_map(inst, {3: 0, 7: 2, 9: -1})
    assert got[0, 0] == 1 and got[3, 3] == 3 and got[0, 5] == 0 and got[5, 0] == 0


def test_detection_by_size_bins_recall_by_true_area_and_precision_by_predicted_area():
    from promptnucseg.models.evaluation.metrics import detection_by_size, instance_overlap, pooled_by_size

    gt = np.zeros((60, 60), np.int32)
    gt[0:10, 0:10] = 1  # 100 px: small, found
    gt[20:30, 0:10] = 2  # 100 px: small, missed
    gt[0:30, 30:50] = 3  # 600 px: 400-800, found by a 500-px prediction (IoU 0.83)
    pred = np.zeros_like(gt)
    pred[0:10, 0:10] = 5
    pred[0:25, 30:50] = 7
    pred[40:60, 40:60] = 9  # 400 px false positive
    counts = detection_by_size(instance_overlap(gt, pred))
    assert counts["0-200"] == {"n_true": 2, "true_matched": 1, "n_pred": 1, "pred_matched": 1}
    assert counts["400-800"] == {"n_true": 1, "true_matched": 1, "n_pred": 2, "pred_matched": 1}
    assert counts["200-400"]["n_true"] == counts[">=800"]["n_true"] == 0
    pooled = pooled_by_size([counts, counts])
    assert pooled["0-200"]["recall"] == 0.5 and pooled["400-800"]["precision"] == 0.5
    assert math.isnan(pooled[">=800"]["recall"])
