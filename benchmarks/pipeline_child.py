"""One `segment_slide` run in a process of its own, so that its peak RSS is that run's alone.

`python -m benchmarks.pipeline_child --slide S --out DIR --result R.json [--roi x,y,w,h] ...`
writes R.json: the run report's figures; the RSS right after the model was loaded and the
highest RSS while `segment_slide` ran (the high-water mark is reset in between, so loading
the checkpoint, which briefly holds it twice, does not hide the run's own peak); on CUDA the
GPU busy fraction over `segment_slide`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

REPORT_KEYS = (
    "nuclei", "tiles", "tiles_in_grid", "batches", "tissue_fraction", "tiles_per_second", "nuclei_per_second",
    "wall_seconds", "peak_rss_mb", "mpp_used", "model_mpp", "outputs",
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_child", description=__doc__.splitlines()[0])
    p.add_argument("--slide", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--roi")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights")
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--profile", action="store_true", help="time each stage (benchmarks/profile_probes.py)")
    args = p.parse_args(argv)

    started = time.monotonic()
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.wsi_pipeline.runner import peak_rss_mb
    from promptnucseg.wsi_pipeline.segment import segment_slide
    from promptnucseg.wsi_pipeline.slides import parse_roi

    from .machine import GpuBusy, StagePeak

    predictor = load_predictor(args.weights, device=args.device, batch_size=args.batch_size)
    loaded = time.monotonic()
    load = {"load_seconds": round(loaded - started, 3), "peak_rss_during_load_mb": round(peak_rss_mb(), 1)}
    settings = SegmentSettings(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, workers=args.workers,
        roi=parse_roi(args.roi) if args.roi else None, overwrite=True, progress=False,
    )
    cuda = predictor.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    probes = None
    if args.profile:
        from .profile_probes import install, summary

        probes = install(predictor)
    with StagePeak() as mem, GpuBusy(predictor.device) as gpu:
        t0 = time.perf_counter()
        report = segment_slide(args.slide, args.out, predictor, settings, log=lambda m: print(m, file=sys.stderr))
        segment_wall = time.perf_counter() - t0
    result = {
        "device": predictor.device,
        "model": {k: predictor.describe().get(k) for k in ("model", "weights", "weights_sha256")},
        **load,
        "rss_after_load_mb": _r(mem.start_mb),
        "run_peak_rss_mb": _r(mem.peak_mb),
        "run_increment_mb": _r(mem.growth_mb),
        "memory_method": mem.method,
        "report": {k: report.get(k) for k in REPORT_KEYS},
        "gpu_busy_fraction": None if gpu.fraction is None else round(gpu.fraction, 3),
        "gpu_busy_source": gpu.source,
        "settings": {"roi": list(settings.roi) if settings.roi else None, "tile_size": settings.tile_size, "overlap": settings.overlap, "batch_size": settings.batch_size, "workers": settings.workers},
    }
    if probes is not None:
        result["profile"] = summary(probes, segment_wall)
    if cuda:
        result["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 1024**2, 1)
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    return 0


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


if __name__ == "__main__":
    sys.exit(main())
