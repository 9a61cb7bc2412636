"""Where a pipeline run's time goes: stopwatches around the pipeline's own stage functions.

`install()` wraps (in this process only; the benchmark child) the functions each stage is made
of, so the run itself is the real one:

| stage | what is timed | runs in |
|---|---|---|
| `tissue_mask` | `tissue.tissue_mask` (and `detect_tissue` for the stain fit) | main thread, before the loop |
| `plan_other` | the rest of `plan.plan_slide` (grid, refusals, stain fit's reads) | main thread |
| `estimate` | `segment.probe_model`: the plan's test window (its model calls not in `model`) | main thread |
| `read` | `runner._read_tile`: one tile read and resampled | reader threads, overlapped |
| `model` | `predictor.predict` | main thread |
| `postprocess` | `stitch.from_tile_nuclei`: outlines, simplification, morphometrics, ids | post threads, overlapped |
| `stitch` | `stitch.owned_nuclei` (ownership) + `save_part` + `Journal.record` (parts on disk) | post threads, overlapped |
| `loop_wait` | the main thread in the loop but not in the model: waiting for reads or post-processing | main thread |
| `export` | `segment.finalize`: GeoJSON, zarr, table (reading the parts back included) | main thread, after the loop |

Shares are of the run's wall time. Stages in threads overlap the model, so their thread-seconds
can add up to more than the wall. The model's *busy fraction* is its time over the tile loop's
wall (`run_batches`): what the rest of the loop costs it.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Callable

STAGES = ("tissue_mask", "plan_other", "estimate", "read", "model", "postprocess", "stitch", "loop_wait", "export")


class Probes:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.depth = threading.local()

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] += seconds
            self.calls[stage] += 1

    def wrap(self, stage: str, f: Callable) -> Callable:
        def timed(*a: Any, **k: Any) -> Any:
            outer = getattr(self.depth, stage, 0) == 0  # a stage calling itself (or its twin) counts once
            setattr(self.depth, stage, getattr(self.depth, stage, 0) + 1)
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                setattr(self.depth, stage, getattr(self.depth, stage) - 1)
                if outer:
                    self.add(stage, time.perf_counter() - t0)

        timed.__wrapped__ = f  # type: ignore[attr-defined]
        return timed


def install(predictor: Any) -> Probes:
    """Wrap the stage functions (module attributes the pipeline looks up at call time)."""
    from promptnucseg.wsi_pipeline import journal, nuclei, plan, runner, segment, stitch, tissue

    p = Probes()
    plan.tissue_mask = p.wrap("tissue_mask", tissue.tissue_mask)
    plan.detect_tissue = p.wrap("tissue_mask", tissue.detect_tissue)
    plan.plan_slide = p.wrap("plan", plan.plan_slide)
    segment.plan_slide = plan.plan_slide
    runner._read_tile = p.wrap("read", runner._read_tile)
    stitch.from_tile_nuclei = p.wrap("postprocess", stitch.from_tile_nuclei)
    stitch.owned_nuclei = p.wrap("stitch", stitch.owned_nuclei)
    stitch.save_part = p.wrap("stitch", nuclei.save_part)
    journal.Journal.record = p.wrap("stitch", journal.Journal.record)
    runner.run_batches = p.wrap("loop", runner.run_batches)
    segment.run_batches = runner.run_batches
    segment.finalize = p.wrap("export", segment.finalize)
    predictor.predict = p.wrap("model", predictor.predict)
    probe_model = segment.probe_model

    def probe(pred: Any, *a: Any, **k: Any) -> Any:  # the plan's test window: the estimate's calls, not the loop's
        wrapped = pred.predict
        pred.predict = getattr(wrapped, "__wrapped__", wrapped)
        try:
            return probe_model(pred, *a, **k)
        finally:
            pred.predict = wrapped

    segment.probe_model = p.wrap("estimate", probe)
    return p


def summary(p: Probes, wall: float) -> dict[str, Any]:
    """Seconds and shares of `wall` per stage, and the model's busy fraction over the loop."""
    s = dict(p.seconds)
    loop = s.get("loop", 0.0)
    named = ("tissue_mask", "estimate", "read", "model", "postprocess", "stitch", "export")
    out = {k: round(s.get(k, 0.0), 3) for k in named}
    out["plan_other"] = round(max(0.0, s.get("plan", 0.0) - s.get("tissue_mask", 0.0)), 3)
    out["loop_wait"] = round(max(0.0, loop - s.get("model", 0.0)), 3)
    seconds = {k: out[k] for k in STAGES}
    return {
        "wall_seconds": round(wall, 3),
        "loop_seconds": round(loop, 3),
        "seconds": seconds,
        "share_of_wall": {k: round(v / wall, 3) if wall else None for k, v in seconds.items()},
        "model_busy_fraction": round(s.get("model", 0.0) / loop, 3) if loop else None,
        "calls": dict(p.calls),
        "note": "read, postprocess and stitch run in threads beside the model; their seconds overlap it",
    }
