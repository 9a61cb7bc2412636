"""`python -m benchmarks.given_points`: the segmentor's ceiling with perfect prompts.

One interior point per ground-truth nucleus (the pixel farthest from its edge, so concave
nuclei are hit too) of the held-out Kumar images goes to the predictor as given points
(`GivenPrompts`, mode "only": no prompter). Prints the fraction of points whose nucleus mask
contains them, PQ/AJI against the ground truth, and time per point, next to the prompter's own
run on the same images.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kumar" / "train"
VAL = ("TCGA-18-5592-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1")  # configs/kumar_light.yaml val_names


def interior_points(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (N, 2) x, y pixel-index points): each instance's pixel farthest from its boundary."""
    ids, pts = [], []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        dist = ndimage.distance_transform_edt(np.pad(labels[sl] == i, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        ids.append(i)
        pts.append((x + sl[1].start, y + sl[0].start))
    return np.asarray(ids, np.int64), np.asarray(pts, np.float32).reshape(-1, 2)


def main() -> None:
    import tifffile
    from PIL import Image

    from promptnucseg.models.evaluation.metrics import score_label_maps
    from promptnucseg.models.interface import GivenPrompts, load_predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", default=",".join(VAL))
    parser.add_argument("--weights", help="model file or bundled name (default: the bundled default)")
    args = parser.parse_args()
    predictor = load_predictor(args.weights, device=args.device)
    given_pairs, auto_pairs, hit, total, seconds = [], [], 0, 0, 0.0
    for name in args.images.split(","):
        rgb = np.asarray(Image.open(DATA / "images" / f"{name}.png").convert("RGB"))
        gt = tifffile.imread(DATA / "labels" / f"{name}.tif").astype(np.int32)
        _, pts = interior_points(gt)
        started = time.perf_counter()
        (given,) = predictor.predict([rgb], [GivenPrompts(pts, np.zeros(len(pts)), "only")])
        seconds += time.perf_counter() - started
        inst, _ = given.label_maps(gt.shape)
        at = inst[pts[:, 1].astype(int), pts[:, 0].astype(int)]
        # a point counts when the nucleus at it is the one it prompted
        hit += int(sum(a > 0 and np.array_equal(given.points[a - 1], p) for a, p in zip(at, pts)))
        total += len(pts)
        given_pairs.append((name, gt, inst))
        (auto,) = predictor.predict([rgb])
        auto_pairs.append((name, gt, auto.label_maps(gt.shape)[0]))
    g, a = score_label_maps(given_pairs)["mean"], score_label_maps(auto_pairs)["mean"]
    print(json.dumps({
        "images": args.images.split(","), "device": args.device, "points": total, "points_in_own_nucleus": hit,
        "fraction": round(hit / max(total, 1), 4), "ms_per_point": round(1000 * seconds / max(total, 1), 2),
        "given_points": {k: round(float(g[k]), 4) for k in ("pq", "aji", "dq", "sq")},
        "prompter": {k: round(float(a[k]), 4) for k in ("pq", "aji", "dq", "sq")},
    }, indent=1))


if __name__ == "__main__":
    main()
