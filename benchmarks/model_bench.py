"""(a) The model alone: `predictor.predict` on real 256-px tiles at several batch sizes.

No slide reading, stitching or export: this is the ceiling the pipeline can reach. Each
batch size is warmed up first (a whole batch on CUDA, where kernels are tuned per shape; one
tile on CPU, where a first call only pays one-off allocation), then timed over `repeats`
batches of distinct tiles.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from .machine import GpuBusy, StagePeak


def bench_model(predictor: Any, tiles: Sequence[np.ndarray], batch_sizes: Sequence[int], min_tiles: int) -> list[dict[str, Any]]:
    """One row per batch size: tiles/s, nuclei/s, s/tile, stage peak RSS; on CUDA also GPU
    busy fraction and the peak memory torch allocated. At least `min_tiles` tiles (and one
    batch) are timed per size."""
    cuda = str(predictor.device).startswith("cuda")
    if cuda:
        import torch
    rows = []
    n = len(tiles)
    for b in batch_sizes:
        if b > n:
            raise ValueError(f"batch {b} needs {b} distinct tiles, only {n} were cut")
        predictor.predict(list(tiles[:b]) if cuda else [tiles[0]])  # warm-up, untimed
        repeats = max(1, math.ceil(min_tiles / b))
        batches = [[tiles[(r * b + i) % n] for i in range(b)] for r in range(repeats)]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds, nuclei = 0.0, 0
        with StagePeak() as mem, GpuBusy(str(predictor.device)) as gpu:
            for batch in batches:
                t0 = time.perf_counter()
                out = predictor.predict(batch)  # returns numpy: the device work is finished
                seconds += time.perf_counter() - t0
                nuclei += sum(len(t) for t in out)
        done = repeats * b
        row: dict[str, Any] = {
            "batch": b,
            "batches_timed": repeats,
            "tiles": done,
            "nuclei": nuclei,
            "seconds": round(seconds, 4),
            "tiles_per_second": round(done / seconds, 3),
            "nuclei_per_second": round(nuclei / seconds, 2),
            "seconds_per_tile": round(seconds / done, 4),
            "peak_rss_mb": _r(mem.peak_mb),
            "rss_growth_mb": _r(mem.growth_mb),
            "gpu_busy_fraction": None if gpu.fraction is None else round(gpu.fraction, 3),
            "gpu_busy_source": gpu.source,
        }
        if cuda:
            row["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 1024**2, 1)
        rows.append(row)
    return rows


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
