"""The window decoder before and after, A/B in one process: the reference decode (image tokens
copied per prompt, every mask upsampled over its whole window) against all of a window's prompts
against shared image tokens with masks upsampled in their boxes (`models/segmentor/window_decode.py`).

    nice -n 19 python -m benchmarks.decoder_ab [--images 2] [--crop 1000] [--rounds 2] [--threads 2] [--json F]

One predictor, its `boxed_masks` switched between the calls; each round runs every tile through
both, the order alternating from round to round, so load on a shared machine falls on both alike.
Each call is profiled by part (`model_parts`), and the two runs' nuclei are compared: the same
points and boxes, masks equal pixel for pixel (the change is meant to be exact).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from .model_parts import CLOCKS, PARTS, probed

VARIANTS = {"before (reference decode)": False, "after (shared tokens, boxed masks)": True}


def same_nuclei(a: Any, b: Any) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.points, b.points)
        and np.array_equal(a.boxes, b.boxes)
        and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    )


def run_ab(predictor: Any, tiles: list[np.ndarray], rounds: int, now: Any = time.perf_counter) -> dict[str, Any]:
    predictor.predict(tiles[:1])  # warm-up
    seconds = {v: 0.0 for v in VARIANTS}
    parts = {v: {p: 0.0 for p in PARTS} for v in VARIANTS}
    counts = {v: {"windows": 0, "prompts": 0} for v in VARIANTS}
    nuclei = {v: 0 for v in VARIANTS}
    identical, compared = 0, 0
    for r in range(rounds):
        for i, tile in enumerate(tiles):
            order = list(VARIANTS) if (r + i) % 2 == 0 else list(reversed(VARIANTS))
            outs = {}
            for v in order:
                predictor.boxed_masks = VARIANTS[v]
                with probed(predictor, now) as clock:
                    t0 = now()
                    outs[v] = predictor.predict([tile])[0]
                    seconds[v] += now() - t0
                for p in PARTS:
                    parts[v][p] += clock.seconds.get(p, 0.0)
                counts[v]["windows"] += clock.counts["windows"]
                counts[v]["prompts"] += clock.counts["prompts"]
                nuclei[v] += len(outs[v])
            a, b = outs.values()
            identical += same_nuclei(a, b)
            compared += 1
    predictor.boxed_masks = True
    before, after = VARIANTS
    return {
        "seconds": seconds,
        "parts": parts,
        "counts": counts,
        "nuclei": nuclei,
        "identical_calls": identical,
        "calls_compared": compared,
        "speedup": seconds[before] / seconds[after],
    }


def show(r: dict[str, Any]) -> None:
    before, after = VARIANTS
    print(f"\n| part | {before} s | {after} s | ratio |")
    print("|---|---|---|---|")
    for p in PARTS:
        a, b = r["parts"][before][p], r["parts"][after][p]
        print(f"| {p} | {a:.2f} | {b:.2f} | {a / b if b else float('nan'):.2f}x |")
    a, b = r["seconds"][before], r["seconds"][after]
    print(f"| **predict, whole** | {a:.2f} | {b:.2f} | **{a / b:.2f}x** |")
    print(
        f"windows {r['counts'][after]['windows']}, prompts decoded {r['counts'][after]['prompts']}, nuclei {r['nuclei'][before]} / {r['nuclei'][after]}; "
        f"identical outputs in {r['identical_calls']} of {r['calls_compared']} calls"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decoder_ab", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--crop", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall, or cpu: process CPU seconds (with --threads 1 on a loaded machine)",
    )
    p.add_argument("--tiles", help="folder of H&E PNGs at 0.25 um/px (default ../shared/data/kumar/train/images)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    from promptnucseg.models.interface import load_predictor

    from .inputs import kumar_images
    from .machine import machine_facts

    torch.set_num_threads(args.threads)
    tiles, where = kumar_images(args.tiles, args.images, args.crop)
    predictor = load_predictor(device="cpu")
    load = os.getloadavg()[0]
    r = run_ab(predictor, tiles, args.rounds, CLOCKS[args.clock])
    r.update(
        images=where,
        threads=args.threads,
        clock=args.clock,
        rounds=args.rounds,
        load_at_start=load,
        load_at_end=os.getloadavg()[0],
    )
    print(
        f"decoder A/B: {where}; {args.threads} threads, {args.clock} seconds, {args.rounds} rounds; load {load:.1f} -> {r['load_at_end']:.1f}"
    )
    show(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine_facts("cpu"), **r}, fh, indent=1)


if __name__ == "__main__":
    main()
