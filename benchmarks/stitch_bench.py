"""(c) Stitching and export alone, as the nucleus count grows.

Real nuclei (the model's output on a few real tiles) are laid out again over a growing grid
of overlapping tiles, each copy at its own tile origin, and pushed through the pipeline's own
steps, each timed on its own: ownership (`stitch.owned_nuclei`: keep the nuclei whose prompt lies
in the tile's core), records (`stitch.from_tile_nuclei`: outlines, morphometrics, level-0
coordinates, ids), parts (concatenate a batch and journal it with `save_part`, as
`stitch.stitch_batch` does), then reading the parts back and each exporter streaming them.
Every stage must cost the same per nucleus at 1x and 10x (linear), and the memory a size
needs must not grow with it (the exporters stream).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from promptnucseg.models.interface import TileNuclei

from .machine import StagePeak

STAGES = ("own", "records", "parts", "read", "geojson", "zarr", "table")
MULTIPLIERS = (1, 3, 10)


def real_nuclei(predictor: Any, tiles: Sequence[np.ndarray]) -> list[tuple[np.ndarray, TileNuclei]]:
    """(tile, its nuclei) for each real tile, from the model."""
    return list(zip(tiles, predictor.predict(list(tiles))))


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_outputs(paths: dict[str, Path], nuclei: int) -> None:
    """The outputs hold every nucleus: a timing of an export that dropped some is no timing."""
    import zarr

    with open(paths["geojson"], "rb") as fh:
        features = sum(1 for line in fh if line.startswith(b'{"type":"Feature"'))
    stored = zarr.open_group(str(paths["zarr"]), mode="r").attrs["counts"]["nuclei"]
    table = paths["table"]
    if table.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_metadata(table).num_rows
    else:
        with open(table, "rb") as fh:
            rows = sum(1 for _ in fh) - 1
    counts = {"geojson": features, "zarr": int(stored), "table": int(rows)}
    wrong = {k: v for k, v in counts.items() if v != nuclei}
    if wrong:
        raise RuntimeError(f"stitch benchmark: exports hold {wrong} nuclei, {nuclei} were recorded")


def stitch_size(
    sources: Sequence[tuple[np.ndarray, TileNuclei]], cols: int, rows: int, folder: Path, class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]], model_mpp: float, overlap: int = 32, batch_size: int = 8,
) -> dict[str, Any]:
    """Ownership, records, parts and the three exports for a `cols` x `rows` grid of tiles,
    tile k carrying the nuclei of `sources[k % len(sources)]`. The virtual slide is at the
    model's scale (one level-0 pixel per model pixel)."""
    from promptnucseg.wsi_pipeline.exporters import write_geojson, write_table, write_zarr
    from promptnucseg.wsi_pipeline.journal import Journal
    from promptnucseg.wsi_pipeline.nuclei import SlideNuclei, save_part
    from promptnucseg.wsi_pipeline.plan import SlidePlan
    from promptnucseg.wsi_pipeline.runner import iter_parts
    from promptnucseg.wsi_pipeline.stitch import from_tile_nuclei, owned_nuclei
    from promptnucseg.wsi_pipeline.tiling import TileGrid

    tile = sources[0][0].shape[0]
    if any(rgb.shape[:2] != (tile, tile) for rgb, _ in sources):
        raise ValueError("stitch benchmark: the source tiles must be square and of one size")
    probe = TileGrid(tile, tile, tile, overlap)
    width, height = cols * probe.stride + (tile - probe.stride), rows * probe.stride + (tile - probe.stride)
    grid = TileGrid(width, height, tile, overlap)
    tiles = list(grid)
    assert len(tiles) == cols * rows and all(t.w == tile and t.h == tile for t in tiles), "grid does not come out whole"
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    plan = SlidePlan(
        path=folder / "virtual", stem="stitch", slide_key="benchmark-stitch", slide_mpp=model_mpp, mpp_source="benchmark", model_mpp=model_mpp,
        scale=1.0, roi=(0, 0, width, height), grid=grid, tiles=tiles, batches=batches, tissue_fraction=1.0, slide_facts={}, dimensions=(width, height),
    )
    journal = Journal(folder)
    journal.start({"benchmark": "stitch", "cols": cols, "rows": rows})
    seconds = dict.fromkeys(STAGES, 0.0)
    memory: dict[str, dict[str, Any]] = {}
    nuclei_in, nuclei = 0, 0

    with StagePeak() as mem:
        for b, batch in enumerate(batches):
            parts = []
            for t in batch:
                rgb, found = sources[t.index % len(sources)]
                origin = (float(t.x), float(t.y))
                nuclei_in += len(found)
                t0 = time.perf_counter()
                owned = owned_nuclei(plan, t, found, origin, plan.scale)
                t1 = time.perf_counter()
                parts.append(from_tile_nuclei(owned, origin_level0=origin, scale=plan.scale, slide_key=plan.slide_key, rgb_tile=rgb, model_mpp=model_mpp))
                t2 = time.perf_counter()
                seconds["own"] += t1 - t0
                seconds["records"] += t2 - t1
            t0 = time.perf_counter()
            merged = SlideNuclei.concatenate(parts)
            path = save_part(journal.part_path(b), merged)
            journal.record(b, path, {"tiles": [t.index for t in batch], "nuclei": len(merged)})
            seconds["parts"] += time.perf_counter() - t0
            nuclei += len(merged)
    memory["own+records+parts"] = {"peak_rss_mb": mem.peak_mb, "growth_mb": mem.growth_mb}

    paths = {"geojson": folder / "stitch.geojson", "zarr": folder / "stitch.zarr", "table": folder / "stitch_nuclei.parquet"}
    meta = {"slide": "benchmark", "class_names": list(class_names), "model_mpp": model_mpp}
    work = {
        "read": lambda: sum(len(p) for p in iter_parts(journal)),
        "geojson": lambda: write_geojson(paths["geojson"], iter_parts(journal), class_names, class_colors),
        "zarr": lambda: write_zarr(paths["zarr"], iter_parts(journal), meta),
        "table": lambda: write_table(paths["table"], iter_parts(journal), class_names=class_names),
    }
    for stage, job in work.items():
        with StagePeak() as mem:
            t0 = time.perf_counter()
            value = job()
            seconds[stage] = time.perf_counter() - t0
        memory[stage] = {"peak_rss_mb": mem.peak_mb, "growth_mb": mem.growth_mb}
        if stage == "read" and value != nuclei:
            raise RuntimeError(f"stitch benchmark: parts hold {value} nuclei, {nuclei} were recorded")
        if stage == "table":
            paths["table"] = value  # .csv when pyarrow is missing
    _check_outputs(paths, nuclei)

    per = 1e6 / max(nuclei, 1)
    return {
        "grid": f"{cols}x{rows}",
        "tiles": len(tiles),
        "nuclei_on_tiles": nuclei_in,
        "nuclei": nuclei,
        "seconds": {k: round(v, 6) for k, v in seconds.items()},
        "seconds_total": round(sum(seconds.values()), 6),
        "us_per_nucleus": {k: round(v * per, 2) for k, v in seconds.items()},
        "us_per_nucleus_total": round(sum(seconds.values()) * per, 2),
        "peak_rss_mb": round(max(m["peak_rss_mb"] or 0.0 for m in memory.values()), 1),
        "rss_growth_mb": round(max(m["growth_mb"] or 0.0 for m in memory.values()), 1),
        "memory_by_stage": {k: {kk: None if vv is None else round(vv, 1) for kk, vv in v.items()} for k, v in memory.items()},
        "memory_method": mem.method,
        "output_bytes": {k: _folder_bytes(p) for k, p in paths.items()},
    }


def bench_stitch(
    sources: Sequence[tuple[np.ndarray, TileNuclei]], base_cols: int, base_rows: int, class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]], model_mpp: float, multipliers: Sequence[int] = MULTIPLIERS, overlap: int = 32, batch_size: int = 8,
) -> dict[str, Any]:
    """`stitch_size` at each multiple of the base grid's rows (after an untimed 1-tile warm-up
    that pays the exporters' imports), and the growth from the smallest to the largest."""
    sizes = []
    with tempfile.TemporaryDirectory(prefix="pns-stitch-") as tmp:
        stitch_size(sources, 1, 1, Path(tmp) / "warmup", class_names, class_colors, model_mpp, overlap, batch_size)
        for m in multipliers:
            row = stitch_size(sources, base_cols, base_rows * m, Path(tmp) / f"x{m}", class_names, class_colors, model_mpp, overlap, batch_size)
            sizes.append({"multiplier": m, **row})
    first, last = sizes[0], sizes[-1]
    nuclei_ratio = last["nuclei"] / max(first["nuclei"], 1)
    time_ratio = {k: _ratio(last["seconds"][k], first["seconds"][k]) for k in STAGES}
    time_ratio["total"] = _ratio(last["seconds_total"], first["seconds_total"])
    return {
        "source_tiles": len(sources),
        "source_nuclei": int(sum(len(n) for _, n in sources)),
        "overlap": overlap,
        "tiles_per_part": batch_size,
        "sizes": sizes,
        "growth": {
            "from_to": f"{first['multiplier']}x -> {last['multiplier']}x",
            "nuclei_ratio": round(nuclei_ratio, 3),
            "time_ratio": time_ratio,
            # time ratio / nucleus ratio: 1 = linear, above = worse than linear
            "time_ratio_per_nucleus_ratio": {k: None if v is None else round(v / nuclei_ratio, 3) for k, v in time_ratio.items()},
            "rss_growth_mb": [s["rss_growth_mb"] for s in sizes],
            "peak_rss_mb": [s["peak_rss_mb"] for s in sizes],
        },
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None
