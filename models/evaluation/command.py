"""`promptnucseg evaluate`: score a model on a dataset, or score two folders of label maps.

Two modes, one scorer (`metrics.score_label_maps`):
  --pred DIR --gt DIR          label maps paired by file stem (.npy/.png/.tif/.tiff)
  --data DATASET [--weights]   run the model (bundled one by default) over a dataset
Both print one row per image plus the mean, and `--json OUT` writes the same numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.folders import files_by_stem
from ..engines import ENGINES, apply_engine
from ..data.label_maps import LABEL_SUFFIXES, LabelMapError, read_label_map
from .metrics import IMAGE_METRICS, DetectionCounts, MatchCounts, class_f1_scores, detection_scores, score_label_maps

CONVENTIONS = (
    "HoVer-Net conventions: AJI is MoNuSeg's (not AJI+); PQ pairs are unique at IoU > 0.5; "
    "both on relabelled maps; per image, then the mean over images (NaN images skipped)"
)
DETECTION_RADIUS_PX = 12.0


class EvaluationInputError(ValueError):
    """Folders or options that cannot be evaluated as given; the message says the fix."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    files = parser.add_argument_group("score label maps you already have")
    files.add_argument("--pred", metavar="DIR", help="folder of predicted instance maps (.npy/.png/.tif)")
    files.add_argument("--gt", metavar="DIR", help="folder of ground-truth instance maps, same file stems as --pred")
    model = parser.add_argument_group("run a model over a dataset and score it")
    model.add_argument("--data", metavar="DATASET_DIR", help="dataset folder (images/ + labels/)")
    model.add_argument("--weights", metavar="CKPT", help="model file (default, or empty: the bundled model), or a segmentor/SAM file to pair with --prompter-weights")
    model.add_argument("--prompter-weights", metavar="CKPT", help="prompter for a segmentor given by --weights (ours, or the PromptNucSeg release's best.pth/latest.pth)")
    model.add_argument("--tta", action="store_true", help="test-time augmentation (8 flips/turns per window)")
    model.add_argument("--preset", choices=("kumar", "cpm17", "pannuke"), help="the PromptNucSeg release's settings for this data set (default: read from release files)")
    model.add_argument("--images", metavar="A,B", help="only these image names (comma-separated stems)")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    model.add_argument("--engine", default="eager", choices=ENGINES, help="how the networks run on CPU (default eager; onnxruntime/openvino need their optional extra; models/engines.py)")
    model.add_argument("--save-pred", metavar="DIR", help="also write each predicted instance map as DIR/<name>.tif")
    parser.add_argument("--json", metavar="OUT.json", help="write per-image and mean metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    try:
        if args.data and (args.pred or args.gt):
            raise EvaluationInputError("--data and --pred/--gt both given. Fix: pass either --data (run a model) or --pred and --gt (score label maps), not both")
        if args.data:
            report = _evaluate_model(args)
        elif args.pred and args.gt:
            report = _evaluate_folders(Path(args.pred), Path(args.gt))
        else:
            raise EvaluationInputError("nothing to evaluate. Fix: pass --pred DIR --gt DIR, or --data DATASET_DIR [--weights CKPT]")
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # LabelMapError, CheckpointError, bad device
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
        raise EvaluationInputError(f"{folder}: not a folder. Fix: pass the folder that holds the label maps")
    found = files_by_stem(folder, LABEL_SUFFIXES, "label maps")
    if not found:
        raise EvaluationInputError(f"{folder}: no label maps ({'/'.join(LABEL_SUFFIXES)}). Fix: point to the folder that holds them")
    return found


def pair_label_files(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(stem, gt file, pred file) for every stem; a stem missing on either side is an error."""
    preds, gts = label_files(pred_dir), label_files(gt_dir)
    for have, lack, side in ((gts, preds, "prediction"), (preds, gts, "ground truth")):
        missing = sorted(set(have) - set(lack))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            where = pred_dir if side == "prediction" else gt_dir
            raise EvaluationInputError(f"{where}: no {side} for {shown}. Fix: add the missing file(s) or remove their counterparts")
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


def _evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.datasets import instance_points, open_dataset
    from ..interface import load_predictor

    dataset = open_dataset(args.data)
    names = list(dataset.names)
    chosen: list[int] = list(range(len(names)))
    if args.images:
        wanted = [n.strip() for n in args.images.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            more = " ..." if len(names) > 10 else ""
            raise EvaluationInputError(f"{args.data}: no image named {', '.join(unknown)}. Fix: pick from {', '.join(names[:10])}{more}")
        chosen = [names.index(n) for n in wanted]
    predictor = load_predictor(weights=args.weights or None, device=args.device, prompter_weights=args.prompter_weights, preset=args.preset, tta=args.tta)
    apply_engine(predictor, getattr(args, "engine", "eager"))
    if dataset.mpp and abs(dataset.mpp / predictor.mpp - 1) > 0.1:
        print(f"warning: {args.data} is at {dataset.mpp:g} um/px but the model expects {predictor.mpp:g}; images are scored as they are, not resampled", file=sys.stderr)
    # class F1 needs both sides to number the same classes
    with_classes = len(dataset.class_names) > 1 and tuple(dataset.class_names) == tuple(predictor.class_names)
    save_dir = Path(args.save_pred) if args.save_pred else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)

    detection = DetectionCounts()
    pairs = []
    for i in chosen:
        sample = dataset[i]
        h, w = sample.instances.shape
        nuclei = predictor.predict([sample.image])[0]
        inst, _ = nuclei.label_maps((h, w))
        if save_dir:
            import tifffile

            tifffile.imwrite(save_dir / f"{sample.name}.tif", inst, compression="zlib")
        ids, true_points = instance_points(sample.instances)  # (x, y), like TileNuclei.points
        true_cls = pred_cls = None
        if with_classes and sample.instance_classes is not None:
            true_cls = np.array([sample.instance_classes.get(int(k), -1) for k in ids], np.int64)
            pred_cls = nuclei.classes.astype(np.int64)
        detection = detection + detection_scores(true_points, true_cls, nuclei.points, pred_cls, nuclei.class_scores, radius=DETECTION_RADIUS_PX)
        pairs.append((sample.name, sample.instances, inst))
        print(f"{sample.name}: {len(nuclei)} nuclei found, {len(ids)} in the ground truth", file=sys.stderr)
    scores = score_label_maps(pairs)
    report: dict[str, Any] = {"mode": "model", "data": str(args.data), "model": predictor.describe(), "conventions": CONVENTIONS, **scores}
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
            dataset.class_names[c]: {**vars(detection.per_class.get(c, MatchCounts())), "f1": f1} for c, f1 in per.items()
        }
        report["detection"]["mean_class_f1"] = mean_f1
    return report


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
    det = report.get("detection")
    if det:
        lines.append(f"detection within {det['radius_px']:g} px: precision {_fmt(det['precision'])}  recall {_fmt(det['recall'])}  F1 {_fmt(det['f1'])}  (TP {det['tp']}, FP {det['fp']}, FN {det['fn']})")
        if "mean_class_f1" in det:
            per = "  ".join(f"{name} {_fmt(c['f1'])}" for name, c in det["per_class"].items())
            lines.append(f"class F1: mean {_fmt(det['mean_class_f1'])}  ({per})")
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
