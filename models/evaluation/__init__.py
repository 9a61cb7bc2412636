"""Scoring nucleus segmentations: HoVer-Net-convention metrics and `promptnucseg evaluate`.

Label-map files are read by `models.data.label_maps`, the reader the data sets use too.
"""
from .metrics import (
    DetectionCounts,
    InstanceOverlap,
    MatchCounts,
    PQResult,
    aji,
    class_f1_scores,
    detection_scores,
    f1_from_counts,
    greedy_point_matching,
    instance_overlap,
    pannuke_bpq,
    pannuke_class_pq,
    pannuke_mpq,
    per_tissue_means,
    pq,
    remap_label,
    score_label_maps,
    tissue_average,
)

__all__ = [
    "DetectionCounts",
    "InstanceOverlap",
    "MatchCounts",
    "PQResult",
    "aji",
    "class_f1_scores",
    "detection_scores",
    "f1_from_counts",
    "greedy_point_matching",
    "instance_overlap",
    "pannuke_bpq",
    "pannuke_class_pq",
    "pannuke_mpq",
    "per_tissue_means",
    "pq",
    "remap_label",
    "score_label_maps",
    "tissue_average",
]
