"""`segment_slide`: plan, run (resuming), export, report — for one slide into its own folder."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from ..models.interface import NucleusPredictor
from .errors import PipelineInputError
from .exporters.atomic import atomic_write_text, ensure_output_folder
from .journal import Journal, fingerprint_hash
from .runner import SegmentSettings, SlidePlan, iter_parts, peak_rss_mb, plan_slide, run_batches
from .slides import open_slide

PACKAGES = ("promptnucseg", "torch", "segment-anything", "timm", "openslide-python", "openslide-bin", "tifffile", "zarr", "shapely", "numpy", "dask", "distributed")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def output_paths(folder: Path, stem: str, settings: SegmentSettings) -> dict[str, Path]:
    paths = {"report": folder / f"{stem}_report.json"}
    if "geojson" in settings.formats:
        paths["geojson"] = folder / (f"{stem}.geojson.gz" if settings.gzip else f"{stem}.geojson")
    if "zarr" in settings.formats:
        paths["zarr"] = folder / f"{stem}.zarr"
    if "table" in settings.formats:
        paths["table"] = folder / f"{stem}_nuclei.parquet"
    if settings.label_map:
        paths["label_map"] = folder / f"{stem}_labels.tif"
    return paths


def fingerprint(plan: SlidePlan, predictor: NucleusPredictor, settings: SegmentSettings) -> dict[str, Any]:
    model = predictor.describe()
    return {
        "slide": plan.slide_key,
        "model": model.get("weights_sha256", model.get("model")),
        "model_mpp": plan.model_mpp,
        "slide_mpp": plan.slide_mpp,
        "roi": list(plan.roi),
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "batch_size": settings.batch_size,
        "simplify_tolerance": settings.simplify_tolerance,
        "tissue_mask": settings.use_tissue_mask,
    }


@dataclass
class SlideResult:
    slide: str
    ok: bool
    report: dict[str, Any]
    error: str | None = None


def segment_slide(path: str | Path, out_root: str | Path, predictor: NucleusPredictor, settings: SegmentSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segment one slide into `out_root/<stem>/`; resumes a killed run; returns the report."""
    started = time.monotonic()
    reader = open_slide(path)
    plan = plan_slide(reader, settings, predictor.mpp)
    folder = Path(out_root) / plan.stem
    ensure_output_folder(folder / f"{plan.stem}_report.json")
    paths = output_paths(folder, plan.stem, settings)
    journal = Journal(folder)
    fp = fingerprint(plan, predictor, settings)
    if settings.overwrite:
        journal.clear()
    elif paths["report"].is_file() and not journal.work.exists():
        old = json.loads(paths["report"].read_text())
        if old.get("config_hash") == fingerprint_hash(fp) and old.get("status") == "complete":
            log(f"{plan.path.name}: already complete in {folder} (pass --overwrite to redo)")
            return old
    resumed = journal.start(fp)
    done = journal.done()
    if settings.label_map and plan.dimensions[0] * plan.dimensions[1] > settings.label_map_max_pixels:
        raise PipelineInputError(plan.path, f"--label-map wants a level-0 raster of {plan.dimensions[0]}x{plan.dimensions[1]} px, too large to hold in memory", "drop --label-map for whole slides and use the zarr label raster instead")
    tiles_done = sum(len(plan.batches[b]) for b in done if b < len(plan.batches))
    if resumed:
        log(f"{plan.path.name}: resuming, {len(done)}/{len(plan.batches)} batches already done")
    bar = tqdm(total=len(plan.tiles), initial=tiles_done, desc=plan.path.name, unit="tile", disable=not settings.progress, dynamic_ncols=True)

    def on_batch(n_tiles: int, n_nuclei: int) -> None:
        bar.update(n_tiles)
        bar.set_postfix(nuclei=n_nuclei)

    stats = run_batches(reader, plan, range(len(plan.batches)), predictor, journal, settings, on_batch)
    bar.close()
    report = finalize(plan, journal, predictor, settings, paths, fp)
    wall = time.monotonic() - started
    report.update(
        {
            "wall_seconds": round(wall, 3),
            "tiles_this_run": stats.tiles,
            "tiles_per_second": round(stats.tiles / stats.seconds, 3) if stats.seconds else None,
            "nuclei_per_second": round(stats.nuclei / stats.seconds, 3) if stats.seconds else None,
            "resumed": resumed,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    atomic_write_text(paths["report"], json.dumps(report, indent=1, default=str))
    journal.clear()
    return report


def finalize(plan: SlidePlan, journal: Journal, predictor: NucleusPredictor, settings: SegmentSettings, paths: dict[str, Path], fp: dict[str, Any]) -> dict[str, Any]:
    """Write the final outputs by streaming the journaled parts in batch order."""
    from .exporters import write_geojson, write_label_tiff, write_table, write_zarr

    names, colors = predictor.class_names, predictor.class_colors
    counts = {name: 0 for name in names}
    total = 0
    for part in iter_parts(journal):
        total += len(part)
        for c in part.classes:
            counts[names[int(c)]] += 1
    meta = {
        "slide": str(plan.path),
        "slide_mpp": plan.slide_mpp,
        "mpp_source": plan.mpp_source,
        "model_mpp": plan.model_mpp,
        "roi": list(plan.roi),
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
        "model": predictor.describe(),
        "settings": asdict(settings),
        "versions": package_versions(),
        "config_hash": fingerprint_hash(fp),
    }
    if "geojson" in paths:
        write_geojson(paths["geojson"], iter_parts(journal), names, colors, gzip=settings.gzip)
    if "zarr" in paths:
        write_zarr(paths["zarr"], iter_parts(journal), meta)
    if "table" in paths:
        paths["table"] = write_table(paths["table"], iter_parts(journal), class_names=names)
    if "label_map" in paths:
        write_label_tiff(paths["label_map"], (plan.dimensions[1], plan.dimensions[0]), iter_parts(journal))
    return {
        "status": "complete",
        "slide": str(plan.path),
        "outputs": {k: str(v) for k, v in paths.items()},
        "nuclei": total,
        "class_counts": counts,
        "tiles": len(plan.tiles),
        "tiles_in_grid": len(plan.grid),
        "batches": len(plan.batches),
        "tissue_fraction": round(plan.tissue_fraction, 4),
        "mpp_used": plan.slide_mpp,
        "mpp_source": plan.mpp_source,
        "model_mpp": plan.model_mpp,
        "resampling": f"level-0 px per model px = {plan.scale:.4f}; tiles read from the level nearest to {plan.model_mpp} um/px and resampled",
        "slide_facts": plan.slide_facts,
        "config_hash": fingerprint_hash(fp),
        "model": predictor.describe(),
        "settings": asdict(settings),
        "versions": package_versions(),
    }
