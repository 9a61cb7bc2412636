"""`python -m benchmarks.adapt_curve`: what a pathologist's clicks buy (`promptnucseg adapt`).

On images the model was not trained on, the ground-truth centroids inside the top-left quarter
of each image stand in for a person's clicks (images taken in order until the wanted number of
points is reached; the last quarter cut to a rectangle holding the rest). The prompter is
adapted from them with `adapt`'s own code and settings, and the whole model (prompter +
segmentor) is scored before and after on the other three quarters of every image: detection F1
(12 px) and PQ, both on nuclei whose centroid lies there. Prints one line per point budget and
writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _scored_part(labels: np.ndarray, clicked: tuple[int, int, int, int]) -> np.ndarray:
    """The label map with every instance whose centroid is in the clicked quarter removed."""
    from promptnucseg.models.data.datasets import instance_points

    x0, y0, x1, y1 = clicked
    ids, cents = instance_points(labels)
    drop = ids[(cents[:, 0] >= x0) & (cents[:, 0] < x1) & (cents[:, 1] >= y0) & (cents[:, 1] < y1)]
    out = labels.copy()
    out[np.isin(out, drop)] = 0
    return out


def main() -> None:
    import torch

    from promptnucseg.models.adaptation import AdaptSettings, ClickedRegion, adapt_model, open_source_model
    from promptnucseg.models.data.datasets import instance_points, open_dataset
    from promptnucseg.models.evaluation.metrics import detection_scores, score_label_maps
    from promptnucseg.models.interface import load_predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "consep-patches" / "train"))
    ap.add_argument("--images", default="train_8_*", help="shell pattern(s), comma-separated: images the model never trained on")
    ap.add_argument("--points", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=AdaptSettings.lr, help="adapt's learning rate (a sweep; the command's is the default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = open_dataset(args.data)
    pats = args.images.split(",")
    samples = [ds[i] for i, n in enumerate(ds.names) if any(fnmatchcase(n, p) for p in pats)]
    source = open_source_model(args.model)
    quarters = [(0, 0, s.instances.shape[1] // 2, s.instances.shape[0] // 2) for s in samples]
    truth = [(s.name, _scored_part(s.instances, q)) for s, q in zip(samples, quarters)]

    def score(weights: str) -> dict:
        predictor = load_predictor(weights, device="cpu")
        pairs, det = [], None
        for s, q, (name, gt) in zip(samples, quarters, truth):
            found = predictor.predict([s.image])[0]
            inst, _ = found.label_maps(gt.shape)
            pred = _scored_part(inst, q)
            pairs.append((name, gt, pred))
            _, gp = instance_points(gt)
            _, pp = instance_points(pred)
            d = detection_scores(gp, None, pp, None, None, radius=12.0)
            det = d if det is None else det + d
        scores = score_label_maps(pairs)
        return {"pq": round(scores["mean"]["pq"], 4), "aji": round(scores["mean"]["aji"], 4), "det_f1": round(det.f1, 4)}

    base = score(args.model)
    print(f"before: {base} on the other three quarters of {len(samples)} images", flush=True)
    rows = []
    for budget in args.points:
        regions, left = [], budget
        for s, (x0, y0, x1, y1) in zip(samples, quarters):
            if left <= 0:
                break
            ids, cents = instance_points(s.instances)
            inq = (cents[:, 0] >= x0) & (cents[:, 0] < x1) & (cents[:, 1] >= y0) & (cents[:, 1] < y1)
            if inq.sum() > left:  # a rectangle from the quarter's corner holding `left` centroids
                reach = np.sort(np.maximum(cents[inq, 0] - x0, cents[inq, 1] - y0))
                side = int(np.ceil(reach[left - 1])) + 1
                x1, y1 = x0 + side, y0 + side
                inq = (cents[:, 0] >= x0) & (cents[:, 0] < x1) & (cents[:, 1] >= y0) & (cents[:, 1] < y1)
            pts = cents[inq]
            regions.append(ClickedRegion(s.name, s.image[y0:y1, x0:x1].copy(), np.ones((y1 - y0, x1 - x0), bool), pts - [x0, y0], np.zeros(len(pts), np.int64)))
            left -= len(pts)
        clicks = sum(len(r.points) for r in regions)
        out = Path(f"/tmp/adapt_curve_{budget}_lr{args.lr:g}.pt")
        t0 = time.monotonic()
        outcome, written = adapt_model(source, regions, AdaptSettings(minutes=args.minutes, seed=args.seed, lr=args.lr), out, force=True)
        cpu_min = (time.monotonic() - t0) / 60
        after = score(str(out))
        row = {"points": clicks, "regions": len(regions), "steps": outcome.steps, "minutes_total": round(cpu_min, 2), "before": base, "after": after,
               "held_out_clicks_before": outcome.before.to_dict(), "held_out_clicks_after": outcome.after.to_dict()}
        rows.append(row)
        print(f"{clicks} points ({len(regions)} regions, {outcome.steps} steps, {cpu_min:.1f} min): det F1 {base['det_f1']:.3f} -> {after['det_f1']:.3f}, "
              f"PQ {base['pq']:.3f} -> {after['pq']:.3f}; adapt's own held-out clicks F1 {outcome.before.f1:.3f} -> {outcome.after.f1:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "images": args.images, "minutes": args.minutes, "lr": args.lr, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
