"""Cells per second (`segment --cell-expansion`): the cells of a finished run's nuclei, made again.

    python -m benchmarks.cells_bench RUN_FOLDER [--um 5] [--copies 1 2 4]

RUN_FOLDER is a slide's folder of a finished `segment` run (its `<stem>.zarr` holds the nuclei and
names the slide). Times `cells.slide_cells` on all nuclei and on the left half of them (linear
cost: the same seconds per cell), with the stains (the slide read again) and geometry alone, as
wall and CPU seconds; prints one JSON object. `--copies K` also lays the nuclei out K x K times side
by side (geometry only; the region's tissue mask off) to show the cost per cell staying flat as the
count grows K^2-fold.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import shapely


def load_run(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The run's nuclei (ids, points, outlines) and its zarr attributes."""
    import zarr

    from promptnucseg.wsi_pipeline.nuclei import SlideNuclei

    root = zarr.open_group(str(next(folder.glob("*.zarr"))), mode="r")
    offsets, coords = root["polygon_offsets"][:], root["polygon_coords"][:]
    polygons = [shapely.Polygon(coords[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    ids, points = [str(i) for i in root["id"][:]], root["point"][:]
    n = len(ids)
    zeros = np.zeros(n)
    return SlideNuclei(ids, points, points, zeros, zeros, zeros, polygons, {}), dict(root.attrs)


def timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.wsi_pipeline.cells import slide_cells
    from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
    from promptnucseg.wsi_pipeline.slides import open_slide

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--um", type=float, default=5.0)
    parser.add_argument("--copies", type=int, nargs="*", default=[])
    args = parser.parse_args()
    nuclei, attrs = load_run(args.run)
    recorded = attrs.get("settings") or {}
    settings = SegmentSettings(
        mpp=recorded.get("mpp"), roi=tuple(recorded["roi"]) if recorded.get("roi") else None,
        use_tissue_mask=recorded.get("use_tissue_mask", True), tile_size=recorded.get("tile_size", 1024),
    )
    out: dict[str, Any] = {"slide": attrs["slide"], "nuclei": len(nuclei), "um": args.um}
    with open_slide(attrs["slide"]) as reader:
        facts = load_predictor(device="cpu").facts()  # the bundled model's grid (the run's mpp is checked below)
        if abs(facts.mpp - float(attrs["model_mpp"])) > 1e-6:
            raise SystemExit(f"{args.run}: made at {attrs['model_mpp']} um/px, the bundled model works at {facts.mpp}; time cells of a default-model run")
        plan = plan_slide(reader, settings, facts)
        left = nuclei.select(nuclei.points[:, 0] < np.median(nuclei.points[:, 0]))
        runs = (("all", nuclei, True), ("all_geometry_only", nuclei, False), ("left_half", left, True))
        for name, part, with_stains in runs:
            _, wall, cpu = timed(lambda: slide_cells(part, plan, args.um, reader if with_stains else None))
            out[name] = {
                "cells": len(part), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cells_per_cpu_s": round(len(part) / cpu, 1) if cpu else None,
            }
        plan.tissue = None
        box = shapely.total_bounds(np.asarray(nuclei.polygons, dtype=object))
        step = box[2:] - box[:2] + 4 * args.um / plan.slide_mpp
        for k in args.copies:
            part = tiled(nuclei, k, step)
            _, wall, cpu = timed(lambda: slide_cells(part, plan, args.um, None))
            out[f"copies_{k}x{k}_geometry_only"] = {
                "cells": len(part), "cpu_s": round(cpu, 3), "cpu_ms_per_cell": round(1e3 * cpu / len(part), 3),
            }
    print(json.dumps(out, indent=1))


def tiled(nuclei: Any, k: int, step: np.ndarray) -> Any:
    """The nuclei repeated k x k times, `step` level-0 px apart (new ids, so every copy is its own nucleus)."""
    from promptnucseg.wsi_pipeline.nuclei import SlideNuclei

    parts = []
    for r in range(k):
        for c in range(k):
            shift = np.array([c * step[0], r * step[1]])
            polys = shapely.transform(np.asarray(nuclei.polygons, dtype=object), lambda xy, s=shift: xy + s)
            n = len(nuclei)
            zeros = np.zeros(n)
            ids = [f"{i}-{r}-{c}" for i in nuclei.ids]
            points = nuclei.points + shift
            parts.append(SlideNuclei(ids, points, points, zeros, zeros, zeros, list(polys), {}))
    return SlideNuclei.concatenate(parts)


if __name__ == "__main__":
    main()
