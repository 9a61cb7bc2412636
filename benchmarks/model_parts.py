"""Where the model's time goes: the parts of one `predictor.predict`, per 256-px window and per prompt.

    nice -n 19 python -m benchmarks.model_parts [--images 2] [--crop 1000] [--rounds 2] [--threads 2] [--json F]

Stopwatches wrap the predictor's own functions and modules (in this process only), so the run
is the real one. Each part is timed *exclusively*: a part's clock stops while a part nested in
it runs (the prompter's forward pauses while its encoder runs), so the rows add up to the
wall time of `predict`. All parts come from the same calls, so load on a shared machine falls
on every part alike and the shares hold even when the seconds are inflated.

| part | what is timed |
|---|---|
| prompter encoder | the prompter's backbone (`fpn.body`) and pyramid (`fpn.pyramid`) |
| prompter heads | the rest of `Prompter.forward`: point sampling, offset/class heads, foreground map |
| prompter post-processing | the rest of `_prompts`: window crops, normalising, `candidate_prompts`, point NMS |
| segmentor encoder | `Segmentor.embed` and the window crops (`_embed`) |
| prompt encoding | SAM's `PromptEncoder` (points to tokens) and its dense positional encoding |
| mask decoder | `mask_decoder` or `low_res_masks` (two-way transformer, upscaling, stride-2 masks), duplicate re-decodes excluded |
| mask upsampling | the rest of `decode`/`_decode`, or `boxed_upsample`: stride-2 masks to window pixels (and the view handling) |
| window loop | the rest of `_segment`: which prompts a window holds, thresholds, inner-edge checks, keeping the best |
| merging | `_merge`: each mask's one region, box NMS, the exclusive painting (`exclusive_masks`) |
| duplicate checks | `close_prompts`, `touching_pairs`, `duplicate_prompts` and the re-decodes of suspects, whole |

`per prompt` divides by the prompts decoded on the window grid (the sum of every decode call's
prompts, duplicate re-decodes not counted); `per window` by the windows the segmentor embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import numpy as np

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PARTS = (
    "prompter encoder",
    "prompter heads",
    "prompter post-processing",
    "segmentor encoder",
    "prompt encoding",
    "mask decoder",
    "mask upsampling",
    "window loop",
    "merging",
    "duplicate checks",
)


class ExclusiveClock:
    """Seconds per part, each part's clock paused while a nested part runs."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now  # perf_counter (wall) or process_time (CPU seconds of all the process's threads)
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [part, started, swallow]
        self.counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def part(self, name: str, swallow: bool = False) -> Iterator[None]:
        """Time `name`; with `swallow`, parts nested in it count as it (not as themselves)."""
        if self.stack and self.stack[-1][2]:
            yield
            return
        now = self.now()
        if self.stack:
            top = self.stack[-1]
            self.seconds[top[0]] += now - top[1]
        self.stack.append([name, now, swallow])
        try:
            yield
        finally:
            end = self.now()
            top = self.stack.pop()
            self.seconds[top[0]] += end - top[1]
            if self.stack:
                self.stack[-1][1] = end

    def wrap(self, name: str, f: Callable, swallow: bool = False) -> Callable:
        def timed(*a: Any, **k: Any) -> Any:
            with self.part(name, swallow):
                return f(*a, **k)

        return timed


@contextmanager
def probed(predictor: Any, now: Callable[[], float] = time.perf_counter) -> Iterator[ExclusiveClock]:
    """Install the stopwatches on `predictor` (and the predictor module's helpers) for the block."""
    from promptnucseg.models import predictor as pm

    clock = ExclusiveClock(now)
    seg, prom = predictor.segmentor, predictor.prompter
    state = {"suspects": False}
    with ExitStack() as undo:

        def patch(obj: Any, attr: str, make: Callable[[Callable], Callable]) -> None:
            if not hasattr(obj, attr):
                return  # a part the code under test does not have
            had = attr in vars(obj)
            old = getattr(obj, attr)
            setattr(obj, attr, make(old))
            undo.callback(lambda: setattr(obj, attr, old) if had else delattr(obj, attr))

        def timed(obj: Any, attr: str, name: str) -> None:
            patch(obj, attr, lambda f: clock.wrap(name, f))

        timed(prom.fpn.body, "forward", "prompter encoder")
        timed(prom.fpn, "pyramid", "prompter encoder")
        timed(prom, "forward", "prompter heads")
        timed(predictor, "_prompts", "prompter post-processing")
        timed(seg.prompt_encoder, "forward", "prompt encoding")
        timed(seg.prompt_encoder, "get_dense_pe", "prompt encoding")
        timed(seg.mask_decoder, "forward", "mask decoder")
        timed(pm, "low_res_masks", "mask decoder")  # the shared-token decode (window_decode.py)
        timed(pm, "boxed_upsample", "mask upsampling")
        for attr in ("decode", "decode_boxed"):
            timed(seg, attr, "mask upsampling")
        for attr in ("_segment", "_segment_window"):
            timed(predictor, attr, "window loop")
        timed(predictor, "_merge", "merging")
        for attr in ("close_prompts", "duplicate_prompts"):
            timed(pm, attr, "duplicate checks")

        def touching(f: Callable) -> Callable:
            def run(*a: Any, **k: Any) -> Any:
                with clock.part("duplicate checks"):
                    out = f(*a, **k)
                state["suspects"] = len(out) > 1  # the next decode re-decodes these: a duplicate check
                return out

            return run

        patch(pm, "touching_pairs", touching)

        def decode(f: Callable) -> Callable:
            def run(emb: Any, n_windows: int, j: int, coords: np.ndarray, *a: Any, **k: Any) -> Any:
                if state["suspects"]:
                    state["suspects"] = False
                    with clock.part("duplicate checks", swallow=True):
                        return f(emb, n_windows, j, coords, *a, **k)
                clock.counts["prompts"] += len(coords)
                with clock.part("mask upsampling"):
                    return f(emb, n_windows, j, coords, *a, **k)

            return run

        for attr in ("_decode", "_decode_boxed"):
            patch(predictor, attr, decode)

        def embed(f: Callable) -> Callable:
            def run(tile: np.ndarray, origins: Any, *a: Any, **k: Any) -> Any:
                clock.counts["windows"] += len(origins)
                with clock.part("segmentor encoder"):
                    return f(tile, origins, *a, **k)

            return run

        patch(predictor, "_embed", embed)
        yield clock


def profile(
    predictor: Any, tiles: list[np.ndarray], rounds: int, now: Callable[[], float] = time.perf_counter
) -> dict[str, Any]:
    """Run `predict` on each tile (one per call, as the pipeline's batch of one) `rounds` times."""
    predictor.predict(tiles[:1])  # warm-up: first-call allocations and kernel choices
    walls, nuclei = [], 0
    with probed(predictor, now) as clock:
        for _ in range(rounds):
            for t in tiles:
                t0 = now()
                nuclei += len(predictor.predict([t])[0])
                walls.append(now() - t0)
    wall = float(sum(walls))
    windows, prompts = clock.counts["windows"], clock.counts["prompts"]
    rows = []
    for name in PARTS:
        s = clock.seconds.get(name, 0.0)
        rows.append(
            {
                "part": name,
                "seconds": s,
                "share": s / wall,
                "s_per_window": s / max(windows, 1),
                "ms_per_prompt": 1e3 * s / max(prompts, 1),
            }
        )
    other = wall - sum(r["seconds"] for r in rows)
    rows.append(
        {
            "part": "other (predict's own)",
            "seconds": other,
            "share": other / wall,
            "s_per_window": other / max(windows, 1),
            "ms_per_prompt": 1e3 * other / max(prompts, 1),
        }
    )
    return {
        "wall_seconds": wall,
        "windows": windows,
        "prompts": prompts,
        "nuclei": nuclei,
        "calls": len(walls),
        "parts": rows,
    }


def show(result: dict[str, Any], title: str) -> None:
    print(
        f"\n{title}: {result['calls']} predict calls, {result['windows']} windows, {result['prompts']} prompts decoded, "
        f"{result['nuclei']} nuclei, {result['wall_seconds']:.1f} s"
    )
    print("| part | seconds | share | s per window | ms per prompt |")
    print("|---|---|---|---|---|")
    for r in result["parts"]:
        print(
            f"| {r['part']} | {r['seconds']:.2f} | {r['share']:.3f} | {r['s_per_window']:.4f} | {r['ms_per_prompt']:.2f} |"
        )
    print(
        f"| total | {result['wall_seconds']:.2f} | 1 | {result['wall_seconds'] / max(result['windows'], 1):.4f} | "
        f"{1e3 * result['wall_seconds'] / max(result['prompts'], 1):.2f} |"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_parts", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2, help="whole Kumar images, each one predict call (default 2)")
    p.add_argument("--crop", type=int, default=1000, help="top-left crop of each image in px (default 1000: whole)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall (perf_counter) or cpu (process_time: the process's CPU "
        "seconds, which load on a shared machine does not inflate; use with --threads 1, where no thread waits)",
    )
    p.add_argument("--tiles", help="folder of H&E PNGs at 0.25 um/px (default ../shared/data/kumar/train/images)")
    p.add_argument("--weights", help="model (default: the bundled default)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    from promptnucseg.models.interface import load_predictor

    from .inputs import kumar_images
    from .machine import machine_facts

    torch.set_num_threads(args.threads)
    tiles, where = kumar_images(args.tiles, args.images, args.crop)
    predictor = load_predictor(args.weights, device="cpu")
    load = os.getloadavg()[0]
    result = profile(predictor, tiles, args.rounds, CLOCKS[args.clock])
    result.update(
        images=where, threads=args.threads, clock=args.clock, load_at_start=load, load_at_end=os.getloadavg()[0]
    )
    show(
        result,
        f"model parts ({where}; {args.threads} threads, {args.clock} seconds; load {load:.1f} -> {result['load_at_end']:.1f})",
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine_facts("cpu"), **result}, fh, indent=1)


if __name__ == "__main__":
    main()
