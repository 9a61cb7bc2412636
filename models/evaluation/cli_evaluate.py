"""`promptnucseg evaluate`: score a model on a dataset, or score two folders of label maps.

Two modes, one scorer (`metrics.score_label_maps`):
  --pred DIR --gt DIR          label maps paired by file stem (.npy/.png/.tif/.tiff)
  --data DATASET [--weights]   run the model (bundled one by default) over a dataset
Both print one row per image plus the mean, and `--json OUT` writes the same numbers. On a
PanNuke fold (`types.npy` names each image's tissue) `--data` adds PanNuke's own numbers:
bPQ and mPQ per image, averaged within each tissue, then over tissues.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from promptnucseg.errors import FixableError

from ..data.folders import files_by_stem
from ..engines import ENGINES, apply_engine
from ..data.label_maps import LABEL_SUFFIXES, LabelMapError, read_label_map
from .metrics import (
    IMAGE_METRICS, DetectionCounts, MatchCounts, TypeCounts, class_f1_scores, detection_scores, hovernet_type_scores, pannuke_bpq, pannuke_class_pq, pannuke_mpq,
    per_tissue_means, score_label_maps, tissue_average, type_counts, type_map,
)

CONVENTIONS = (
    "HoVer-Net conventions: AJI is MoNuSeg's (not AJI+); PQ pairs are unique at IoU > 0.5; "
    "both on relabelled maps; per image, then the mean over images (NaN images skipped)"
)
DETECTION_RADIUS_PX = 12.0


class EvaluationInputError(FixableError, ValueError):
    """Folders or options that cannot be evaluated as given; the message says the fix."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    files = parser.add_argument_group("score label maps you already have")
    files.add_argument("--pred", metavar="DIR", help="folder of predicted instance maps (.npy/.png/.tif)")
    files.add_argument("--gt", metavar="DIR", help="folder of ground-truth instance maps, same file stems as --pred")
    model = parser.add_argument_group("run a model over a dataset and score it")
    model.add_argument("--data", metavar="DATASET_DIR", help="dataset folder (images/ + labels/)")
    model.add_argument(
        "--model", "--weights", dest="weights", metavar="NAME_OR_FILE",
        help="a bundled model by name (default, typed: `promptnucseg models`) or a model file; or a segmentor/SAM file to pair with --prompter-weights (default: the bundled default)",
    )
    model.add_argument("--prompter-weights", metavar="CKPT", help="prompter for a segmentor given by --weights (ours, or the PromptNucSeg release's best.pth/latest.pth)")
    model.add_argument("--tta", action="store_true", help="test-time augmentation (8 flips/turns per window)")
    model.add_argument("--preset", choices=("kumar", "cpm17", "pannuke"), help="the PromptNucSeg release's settings for this data set (default: read from release files)")
    model.add_argument("--images", metavar="A,B", help="only these image names (comma-separated stems; shell-style patterns such as train_1_* allowed)")
    model.add_argument(
        "--type-baseline", choices=("majority", "knn"),
        help="score a baseline instead of the model's types, learnt from the training split (the data set's images not chosen by --images): "
        "majority gives every detected nucleus the most frequent class, knn the class of its 15 nearest training nuclei in size, shape and "
        "colour (models/evaluation/baselines.py); for a typed model on a data set with classes/",
    )
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    model.add_argument("--engine", default="eager", choices=ENGINES, help="how the networks run on CPU (default eager; onnxruntime/openvino need their optional extra; models/engines.py)")
    model.add_argument("--save-pred", metavar="DIR", help="also write each predicted instance map as DIR/<name>.tif")
    parser.add_argument("--json", metavar="OUT.json", help="write per-image and mean metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    try:
        if args.data and (args.pred or args.gt):
            raise EvaluationInputError(None, "--data and --pred/--gt both given", "pass either --data (run a model) or --pred and --gt (score label maps), not both")
        if args.data:
            report = _evaluate_model(args)
        elif args.pred and args.gt:
            report = _evaluate_folders(Path(args.pred), Path(args.gt))
        else:
            raise EvaluationInputError(None, "nothing to evaluate", "pass --pred DIR --gt DIR, or --data DATASET_DIR [--weights CKPT]")
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # LabelMapError, CheckpointError, BaselineInputError, bad device
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


# --- mode (b): two folders of label maps -------------------------------------------------


def label_files(folder: Path) -> dict[str, Path]:
    """Label-map files of a folder by stem; two files with one stem are an error."""
    if not folder.is_dir():
        raise EvaluationInputError(folder, "not a folder", "pass the folder that holds the label maps")
    found = files_by_stem(folder, LABEL_SUFFIXES, "label maps")
    if not found:
        raise EvaluationInputError(folder, f"no label maps ({'/'.join(LABEL_SUFFIXES)})", "point to the folder that holds them")
    return found


def pair_label_files(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(stem, gt file, pred file) for every stem; a stem missing on either side is an error."""
    preds, gts = label_files(pred_dir), label_files(gt_dir)
    for have, lack, side in ((gts, preds, "prediction"), (preds, gts, "ground truth")):
        missing = sorted(set(have) - set(lack))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            where = pred_dir if side == "prediction" else gt_dir
            raise EvaluationInputError(where, f"no {side} for {shown}", "add the missing file(s) or remove their counterparts")
    return [(stem, gts[stem], preds[stem]) for stem in sorted(gts)]


def _read_pairs(pairs: list[tuple[str, Path, Path]]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for stem, gt_path, pred_path in pairs:
        true, pred = read_label_map(gt_path), read_label_map(pred_path)
        if true.shape != pred.shape:
            raise LabelMapError(pred_path, f"has shape {pred.shape} but its ground truth {gt_path} has {true.shape}", "predict on the same image size as the ground truth")
        yield stem, true, pred


def _evaluate_folders(pred_dir: Path, gt_dir: Path) -> dict[str, Any]:
    scores = score_label_maps(_read_pairs(pair_label_files(pred_dir, gt_dir)))
    return {"mode": "label-maps", "pred": str(pred_dir), "gt": str(gt_dir), "conventions": CONVENTIONS, **scores}


# --- mode (a): a model over a dataset ----------------------------------------------------


def choose_images(names: list[str], images: str | None, where: str) -> list[int]:
    """Indices of the images an --images value picks (names or shell-style patterns), in its order."""
    import fnmatch

    if not images:
        return list(range(len(names)))
    chosen: list[int] = []
    for want in (n.strip() for n in images.split(",") if n.strip()):
        hits = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, want)]
        if not hits:
            more = " ..." if len(names) > 10 else ""
            raise EvaluationInputError(where, f"no image named {want}", f"pick from {', '.join(names[:10])}{more}")
        chosen += [i for i in hits if i not in chosen]
    return chosen


def same_classes(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two class lists name the same classes in the same order: their first words
    agree, ignoring case (CoNSeP's "spindle-shaped" is the typed model's "Spindle")."""
    import re

    def key(name: str) -> str:
        words = re.findall(r"[a-z0-9]+", name.lower())
        return words[0] if words else ""

    return len(a) == len(b) > 1 and all(key(x) == key(y) for x, y in zip(a, b))


def _evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.datasets import instance_points, open_dataset
    from ..interface import load_predictor

    dataset = open_dataset(args.data)
    names = list(dataset.names)
    chosen = choose_images(names, args.images, str(args.data))
    predictor = load_predictor(weights=args.weights or None, device=args.device, prompter_weights=args.prompter_weights, preset=args.preset, tta=args.tta)
    apply_engine(predictor, getattr(args, "engine", "eager"))
    if dataset.mpp and abs(dataset.mpp / predictor.mpp - 1) > 0.1:
        print(f"warning: {args.data} is at {dataset.mpp:g} um/px but the model expects {predictor.mpp:g}; images are scored as they are, not resampled", file=sys.stderr)
    # class scores need both sides to number the same classes
    with_classes = same_classes(tuple(dataset.class_names), tuple(predictor.class_names))
    if len(dataset.class_names) > 1 and not with_classes:
        print(
            f"warning: {args.data} has classes {', '.join(dataset.class_names)} but the model {', '.join(predictor.class_names)}; types are not scored "
            "(fix: a typed model with the data set's classes, e.g. --model typed on CoNSeP)", file=sys.stderr,
        )
    baseline = None
    if args.type_baseline:
        from .baselines import fit_baseline

        if not with_classes:
            raise EvaluationInputError(args.data, "--type-baseline scores types, which need a data set with classes/ and a model with the same classes", "--model typed on a typed data set")
        baseline = fit_baseline(args.type_baseline, dataset, chosen)
    n_classes = len(predictor.class_names)
    save_dir = Path(args.save_pred) if args.save_pred else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)

    detection = DetectionCounts()
    types = TypeCounts.empty(n_classes)
    class_pq: list[np.ndarray] = []
    pairs = []
    tissues = getattr(dataset, "tissues", None)  # PanNuke: its own convention too (tissue-averaged bPQ, mPQ)
    pannuke: list[tuple[str, float, float]] = []
    for i in chosen:
        sample = dataset[i]
        h, w = sample.instances.shape
        nuclei = predictor.predict([sample.image])[0]
        inst, pred_types = nuclei.label_maps((h, w))
        if baseline is not None:  # the same nuclei, the baseline's types
            nuclei.classes[:] = baseline.classify(sample.image, inst, len(nuclei))
            inst, pred_types = nuclei.label_maps((h, w))
        if save_dir:
            import tifffile

            tifffile.imwrite(save_dir / f"{sample.name}.tif", inst, compression="zlib")
        ids, true_points = instance_points(sample.instances)  # (x, y), like TileNuclei.points
        true_cls = pred_cls = None
        if with_classes and sample.instance_classes is not None:
            true_cls = np.array([sample.instance_classes.get(int(k), -1) for k in ids], np.int64)
            pred_cls = nuclei.classes.astype(np.int64)
            types = types + type_counts(true_points, true_cls, nuclei.points, pred_cls, n_classes, radius=DETECTION_RADIUS_PX)
            class_pq.append(pannuke_class_pq(sample.instances, type_map(sample.instances, sample.instance_classes), inst, pred_types, n_classes))
        detection = detection + detection_scores(true_points, true_cls, nuclei.points, pred_cls, nuclei.class_scores, radius=DETECTION_RADIUS_PX)
        pairs.append((sample.name, sample.instances, inst))
        if tissues:
            mpq = float("nan")
            if with_classes and sample.instance_classes is not None:
                mpq = pannuke_mpq(sample.instances, type_map(sample.instances, sample.instance_classes), inst, pred_types, len(dataset.class_names))
            pannuke.append((tissues[sample.name], pannuke_bpq(sample.instances, inst), mpq))
        print(f"{sample.name}: {len(nuclei)} nuclei found, {len(ids)} in the ground truth", file=sys.stderr)
    scores = score_label_maps(pairs)
    report: dict[str, Any] = {"mode": "model", "data": str(args.data), "model": predictor.describe(), "conventions": CONVENTIONS, **scores}
    if baseline is not None:
        report["type_baseline"] = baseline.describe(predictor.class_names)
    report["detection"] = {
        "radius_px": DETECTION_RADIUS_PX,
        "matching": "greedy in descending class score to the nearest unmatched GT centroid; counts pooled over images",
        "tp": detection.tp,
        "fp": detection.fp,
        "fn": detection.fn,
        "precision": detection.precision,
        "recall": detection.recall,
        "f1": detection.f1,
    }
    if detection.per_class:
        mean_f1, per = class_f1_scores(detection, classes=range(len(dataset.class_names)))
        report["detection"]["per_class"] = {
            predictor.class_names[c]: {**vars(detection.per_class.get(c, MatchCounts())), "f1": f1} for c, f1 in per.items()
        }
        report["detection"]["mean_class_f1"] = mean_f1
    if class_pq:
        report["types"] = _type_report(types, np.stack(class_pq), predictor.class_names)
    if pannuke:
        names = [t for t, _, _ in pannuke]
        bpq, mpq = [b for _, b, _ in pannuke], [m for _, _, m in pannuke]
        report["pannuke"] = {
            "convention": "PanNuke's script: per image (bPQ ignores classes; mPQ averages the classes the image has), mean within each tissue, then over tissues",
            "bpq": tissue_average(bpq, names),
            "mpq": tissue_average(mpq, names),
            "per_tissue": {t: {"bpq": b, "mpq": m} for (t, b), m in zip(per_tissue_means(bpq, names).items(), per_tissue_means(mpq, names).values())},
        }
    return report


def _type_report(types: TypeCounts, class_pq: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """HoVer-Net's type scores over the pooled pairs and PanNuke's mPQ over the images."""
    from .metrics import _nanmean

    hv = hovernet_type_scores(types)
    with np.errstate(all="ignore"):
        per_image_mpq = [_nanmean(row) for row in class_pq]
    return {
        "conventions": (
            f"HoVer-Net's run_nuclei_type_stat: predicted prompt points paired to GT centroids by a Hungarian assignment within {DETECTION_RADIUS_PX:g} px, "
            "pooled over images; F_t per class with weights 2, 2, 1, 1; accuracy over the paired nuclei. PanNuke's mPQ: per image the mean PQ over the "
            "classes present in its GT (PQ of the instance maps cut to each class), then the mean over images; class PQ: per class the mean over the images that have it"
        ),
        "f_d": hv["f_d"],
        "accuracy": hv["accuracy"],
        "f_t": {class_names[c]: v for c, v in hv["f_t"].items()},
        "mean_f_t": hv["mean_f_t"],
        "mpq": _nanmean(per_image_mpq),
        "class_pq": {class_names[c]: _nanmean(class_pq[:, c]) for c in range(len(class_names))},
        "paired": hv["paired"],
        "unpaired_pred": hv["unpaired_pred"],
        "unpaired_true": hv["unpaired_true"],
        "confusion": {"rows": "ground truth", "columns": "predicted", "classes": list(class_names), "counts": hv["confusion"]},
    }


def _r4(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def validation_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of an `evaluate --data` report that a model file records as its validation
    (`export-model --metrics REPORT.json`), under the keys `promptnucseg models` and the run
    report's page read: whole-image means, detection, and the type scores when there are any."""
    det = report.get("detection") or {}
    out: dict[str, Any] = {"data": report.get("data"), "images": [im["name"] for im in report.get("images", [])]}
    out.update({k: _r4(report["mean"][k]) for k in IMAGE_METRICS})
    out.update(det_f1=_r4(det.get("f1")), det_precision=_r4(det.get("precision")), det_recall=_r4(det.get("recall")), n_split=report.get("n_split"))
    types = report.get("types")
    if types:
        out.update(
            mean_f_t=_r4(types["mean_f_t"]), mpq=_r4(types["mpq"]), type_accuracy=_r4(types["accuracy"]), f_d=_r4(types["f_d"]),
            f_t={k: _r4(v) for k, v in types["f_t"].items()}, class_pq={k: _r4(v) for k, v in types["class_pq"].items()},
        )
    if report.get("type_baseline"):
        out["type_baseline"] = report["type_baseline"]["name"]
    return out


# --- output ------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "   nan" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """One aligned row per image, then the mean row (and detection F1 when there is one)."""
    images = report["images"]
    n = report["n_scored"]
    label = f"mean ({n} image{'' if n == 1 else 's'})"
    width = max([len("image"), len(label)] + [len(im["name"]) for im in images])
    head = f"{'image':<{width}}  " + "  ".join(f"{k.upper():>6}" for k in IMAGE_METRICS) + f"  {'#GT':>6}  {'#pred':>6}  {'#split':>6}"
    lines = [head, "-" * len(head)]
    for im in images:
        lines.append(f"{im['name']:<{width}}  " + "  ".join(f"{_fmt(im[k]):>6}" for k in IMAGE_METRICS) + f"  {im['n_true']:>6}  {im['n_pred']:>6}  {im['n_split']:>6}")
    lines.append("-" * len(head))
    lines.append(f"{label:<{width}}  " + "  ".join(f"{_fmt(report['mean'][k]):>6}" for k in IMAGE_METRICS) + f"  {'':>6}  {'':>6}  {report['n_split']:>6}")
    if report.get("by_size"):
        lines.append("by nucleus area (px), IoU > 0.5: " + "  ".join(f"{name} R {_fmt(c['recall'])} P {_fmt(c['precision'])} ({c['n_true']} GT)" for name, c in report["by_size"].items()))
    det = report.get("detection")
    if det:
        lines.append(f"detection within {det['radius_px']:g} px: precision {_fmt(det['precision'])}  recall {_fmt(det['recall'])}  F1 {_fmt(det['f1'])}  (TP {det['tp']}, FP {det['fp']}, FN {det['fn']})")
        if "mean_class_f1" in det:
            per = "  ".join(f"{name} {_fmt(c['f1'])}" for name, c in det["per_class"].items())
            lines.append(f"class F1 (release, per-class greedy): mean {_fmt(det['mean_class_f1'])}  ({per})")
    types = report.get("types")
    if types:
        if report.get("type_baseline"):
            b = report["type_baseline"]
            lines.append(f"types of the baseline '{b['name']}'" + (f" (all {b['class']})" if "class" in b else "") + ", not the model's:")
        per = "  ".join(f"{name} {_fmt(v)}" for name, v in types["f_t"].items())
        lines.append(f"HoVer-Net F_d {_fmt(types['f_d'])}  accuracy {_fmt(types['accuracy'])}  F_t: mean {_fmt(types['mean_f_t'])}  ({per})")
        per = "  ".join(f"{name} {_fmt(v)}" for name, v in types["class_pq"].items())
        lines.append(f"PanNuke mPQ {_fmt(types['mpq'])}  (class PQ: {per})")
    if report.get("pannuke"):
        p = report["pannuke"]
        lines.append(f"PanNuke (mean over {len(p['per_tissue'])} tissues): bPQ {_fmt(p['bpq'])}  mPQ {_fmt(p['mpq'])}")
    return "\n".join(lines)


def _json_ready(obj: Any) -> Any:
    """NaN becomes null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
