"""`segment_slide`: plan, run (resuming), export, report — for one slide into its own folder.

`prepare_slide` (plan + journal) and `finish_slide` (exports + report) are shared with the
distributed run (`distributed/`), which runs the batches in between on dask workers.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from promptnucseg.models.interface import DEFAULT_WINDOW_BATCH, ModelFacts, NucleusPredictor
from .errors import PipelineInputError
from .atomic import atomic_write_text, ensure_output_folder
from .class_summary import ClassSummaryBuilder
from .interrupts import Interrupted
from .journal import Journal, fingerprint_hash
from .locking import FolderLock, FolderLocked
from .outputs import REPORT_SLIDE_MPP, ZARR_SLIDE_MPP, SlideOutputs, slide_folder
from .plausibility import result_warnings
from .points import output_classes, points_report
from .estimate import TimeEstimate, estimate, probe_model, tile_windows
from .preflight import check_free_space, disk_full_explained, plan_summary
from .progress import SlideProgress
from .regions import region_summary, write_region_table
from .plan import SegmentSettings, SlidePlan, plan_slide
from .runner import iter_parts, peak_rss_mb, run_batches
from .slides import SlideReader, open_slide
from .tiling import Tile

PACKAGES = ("promptnucseg", "torch", "segment-anything", "timm", "openslide-python", "openslide-bin", "tifffile", "zarr", "shapely", "numpy", "dask", "distributed")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def fingerprint(plan: SlidePlan, model: ModelFacts, settings: SegmentSettings) -> dict[str, Any]:
    desc = model.describe()
    window_batch = desc.get("window_batch", DEFAULT_WINDOW_BATCH)  # a predictor names it only when not the default
    return {
        "slide": plan.slide_key,
        "model": desc.get("weights_sha256", desc.get("model")),
        # the prompter paired with it and the run settings (a release preset) change outputs too
        "model_config": hashlib.sha256(json.dumps([desc.get("prompter_weights"), desc.get("config")], sort_keys=True, default=str).encode()).hexdigest()[:16],
        "model_mpp": plan.model_mpp,
        "slide_mpp": plan.slide_mpp,
        "roi": list(plan.roi),
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "tile_step": plan.grid.stride,
        "batch_size": settings.batch_size,
        # windows per forward pass, when not the --batch-size it follows by default (batched kernels may round differently)
        **({"window_batch": window_batch} if window_batch != settings.batch_size else {}),
        "simplify_tolerance": settings.simplify_tolerance,
        "tissue_mask": settings.use_tissue_mask,
        "stains": plan.stains.describe(),
        "min_nucleus_um2": plan.min_nucleus_um2,
        # a resume with another points file (or mode) must not mix into this one's outputs
        **({"points": plan.points.fingerprint()} if plan.points is not None else {}),
        # the regions file's content: a redrawn annotation is another run
        **({"regions": plan.regions.fingerprint()} if plan.regions is not None else {}),
        # cells change the outputs; without them the fingerprint (and config hash) is as before
        **({"cell_expansion_um": settings.cell_expansion_um} if settings.cell_expansion_um > 0 else {}),
    }


def settings_record(settings: SegmentSettings) -> dict[str, Any]:
    """The settings as outputs record them; `cell_expansion_um` only when cells are made, so a run
    without them writes the same bytes as before the option existed."""
    record = asdict(settings)
    if not record.get("cell_expansion_um"):
        record.pop("cell_expansion_um", None)
    return record


@dataclass
class SlideResult:
    slide: str
    ok: bool
    report: dict[str, Any]
    error: str | None = None
    locked: bool = False  # refused because another live run holds its folder


def describe_failure(slide: str | Path, err: BaseException) -> str:
    """The one-line message for a slide that failed (the CLI prints it after "error: ")."""
    if isinstance(err, PipelineInputError):
        return str(err)
    return f"{slide}: failed with {type(err).__name__}: {err}. Fix: see the message; other slides go on"


def failed_result(slide: str | Path, err: BaseException) -> SlideResult:
    return SlideResult(str(slide), False, {}, describe_failure(slide, err), locked=isinstance(err, FolderLocked))


def lock_slide_folder(out_root: str | Path, path: str | Path, settings: SegmentSettings, log: Callable[[str], None] = print) -> FolderLock:
    """Hold the slide's folder for this run (see locking.py); the caller releases it."""
    ensure_output_folder(Path(out_root) / ".run")
    folder = slide_folder(out_root, path, claim=True)
    ensure_output_folder(SlideOutputs(folder, folder.name).lock)
    lock = FolderLock(folder).acquire(wait=settings.wait_for_lock, log=log)
    if lock.took_over is not None:
        log(f"{folder}: took over the lock of a run that is gone ({lock.took_over.describe()})")
    return lock


@dataclass
class SlideJob:
    """A planned slide with its journal open: what is left to run and where outputs go."""

    plan: SlidePlan
    folder: Path
    paths: dict[str, Path]
    journal: Journal
    fingerprint: dict[str, Any]
    resumed: bool = False
    started: float = 0.0  # time.monotonic() when preparation began
    finished_report: dict[str, Any] | None = None  # set when an earlier run already completed it
    load_seconds: float = 0.0  # the model's loading before this slide (the first slide of a command pays it)
    estimate: TimeEstimate | None = None  # the plan's time estimate (estimate.py), kept for the report

    def tiles_left(self) -> list[Tile]:
        """The tiles of the batches not yet journaled, in run order."""
        return [t for b in self.pending() for t in self.plan.batches[b]]

    def pending(self) -> list[int]:
        """Batch indices not yet journaled, in order."""
        done = self.journal.done()
        return [b for b in range(len(self.plan.batches)) if b not in done]

    def tiles_done(self) -> int:
        done = self.journal.done()
        return sum(len(self.plan.batches[b]) for b in done if b < len(self.plan.batches))


def prepare_slide(
    reader: SlideReader, out_root: str | Path, model: ModelFacts, settings: SegmentSettings,
    log: Callable[[str], None] = print, timing: Callable[[SlideJob], TimeEstimate] | None = None,
) -> SlideJob:
    """Plan the slide and open (or resume) its journal; notices an already finished run.
    `timing(job)` makes the plan line's time estimate (a model at hand: `measured_estimate`);
    without it the line gives the rough documented figure, said so."""
    started = time.monotonic()
    plan = plan_slide(reader, settings, model)
    plan.min_nucleus_um2 = model.ranges.min_nucleus_um2 if settings.min_nucleus_um2 is None else settings.min_nucleus_um2
    folder = slide_folder(out_root, plan.path)
    outputs = SlideOutputs(folder, folder.name)
    ensure_output_folder(outputs.report)
    paths = outputs.written(settings.formats, settings.gzip, settings.label_map, regions=plan.regions is not None)
    journal = Journal(folder)
    fp = fingerprint(plan, model, settings)
    job = SlideJob(plan, folder, paths, journal, fp, started=started)
    if journal.roll_forward():  # a run killed while swapping its finished outputs in
        kept = journal.clear()
        log(f"{plan.path.name}: finished swapping in the complete outputs of a run killed during the swap" + (f"; left {len(kept)} file(s) not made by promptnucseg in {journal.work}" if kept else ""))
    old = _finished_report(paths["report"])
    if settings.overwrite:
        journal.clear()  # earlier progress only: the finished outputs stay until the new set replaces them
    elif old is not None:
        # complete only if it also wrote every output asked for now (e.g. not when anndata is added to --formats)
        same = old.get("config_hash") == fingerprint_hash(fp) and set(paths) <= set(old.get("outputs", {}))
        if same and not journal.active:
            log(f"{plan.path.name}: already complete in {folder} (pass --overwrite to redo)")
            job.finished_report = old
            return job
        if old.get("config_hash") != fingerprint_hash(fp) and not journal.resumes(fp):  # only more outputs asked for: run, keep the rest
            raise PipelineInputError(
                folder, f"holds the finished results of this slide made with other settings (changed: {_changed(old, fp, paths)})",
                "pass --overwrite to replace them (the old results stay until the new set is complete), or use another --out",
            )
    grid = plan.grid
    if not model.seamless_windows and len(grid) > 1:
        log(
            f"{plan.path.name}: note: this model's settings tie its windows to each tile (whole-tile prompting or the last window "
            "moved flush with the tile's end, the release's), so nuclei near tile borders can differ slightly from a one-pass run"
        )
    elif grid.window_grid and not grid.seamless and len(grid) > 1:
        window, step = grid.window_grid
        example = window + max(1, round((grid.tile_size - window) / step)) * step  # the nearest tile of whole windows
        log(
            f"{plan.path.name}: note: tiles {grid.tile_size}/{grid.real_overlap} are off the model's window grid, so nuclei near tile "
            f"borders can differ slightly from a one-pass run; --tile-size {window} + a multiple of {step} (e.g. {example}) "
            f"with --overlap >= {2 * (window - step)} avoids it"
        )
    if settings.label_map and plan.dimensions[0] * plan.dimensions[1] > settings.label_map_max_pixels:
        raise PipelineInputError(plan.path, f"--label-map wants a level-0 raster of {plan.dimensions[0]}x{plan.dimensions[1]} px, too large to hold in memory", "drop --label-map for whole slides and use the zarr label raster instead")
    check_free_space(folder, plan, settings, already=journal.bytes_on_disk())
    with disk_full_explained(folder):
        job.resumed = journal.start(fp)
    if job.resumed:
        log(f"{plan.path.name}: resuming, {len(journal.done())}/{len(plan.batches)} batches already done")
    job.estimate = timing(job) if timing is not None else None
    device = str(model.describe().get("device", "cpu"))
    log(plan_summary(plan, len(plan.tiles) - job.tiles_done(), len(job.pending()), device, job.estimate))
    if job.estimate is not None:
        log(f"{plan.path.name}: time: {job.estimate.line()}")
    for warning in plan.warnings:
        log(f"{plan.path.name}: warning: {warning}")
    return job


def _finished_report(path: Path) -> dict[str, Any] | None:
    """The folder's finished report, or None (none, unreadable, or not complete)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) and str(old.get("status", "")).startswith("complete") else None


def _changed(old: dict[str, Any], fp: dict[str, Any], paths: dict[str, Path]) -> str:
    """Which settings differ between a finished report and this run, for the refusal."""
    before = old.get("fingerprint") if isinstance(old.get("fingerprint"), dict) else {}
    changed = sorted(k for k in set(before) | set(fp) if before.get(k) != fp.get(k)) if before else []
    missing = sorted(set(paths) - set(old.get("outputs") or {}))
    if missing:
        changed.append("outputs (" + ", ".join(missing) + " not written before)")
    return ", ".join(changed) or "model or settings"


def _previous_outputs(folder: Path, report_name: str) -> list[str]:
    """The file names of the finished set in `folder` that the pipeline wrote: its report (first),
    the outputs the report lists, and `promptnucseg report`'s pictures of it."""
    report = folder / report_name
    old = _finished_report(report) or {}
    names = [report_name] if report.exists() else []
    names += [Path(str(p)).name for p in (old.get("outputs") or {}).values()]
    pictures = SlideOutputs(folder, folder.name).pictures()
    try:
        listed = json.loads(pictures["pictures"].read_text()).get("files") or {}
        names += [Path(str(p)).name for p in listed.values()] + [pictures["pictures"].name]
    except (OSError, ValueError, AttributeError):
        pass
    return [n for n in dict.fromkeys(names) if n and n not in (".", "..")]


def _same_run_outputs(report_path: Path, report: dict[str, Any], paths: dict[str, Path]) -> dict[str, Path]:
    """Outputs of the finished run in the folder that this run does not rewrite, when that run had
    the same settings (config hash): they stay, listed in the new report."""
    old = _finished_report(report_path)
    if old is None or old.get("config_hash") != report.get("config_hash"):
        return {}
    folder = report_path.parent
    out = {}
    for kind, named in (old.get("outputs") or {}).items():
        path = folder / Path(str(named)).name
        if kind not in paths and kind != "report" and path.exists():
            out[str(kind)] = path
    return out


def finish_slide(job: SlideJob, model: ModelFacts, settings: SegmentSettings, run_facts: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export from the journaled parts into the journal's staging folder, write the JSON
    report there last, swap the set into the slide folder (journal.swap_in), then drop the journal."""
    staging = job.journal.staging
    with disk_full_explained(job.folder):
        if staging.exists():
            job.journal.clear_staging()
        staging.mkdir(parents=True)
        staged = {k: staging / p.name for k, p in job.paths.items()}
        report = finalize(job.plan, job.journal, model, settings, staged, job.fingerprint)
        job.paths.update({k: job.folder / p.name for k, p in staged.items()})  # the table may have become .csv
        report["outputs"] = {k: str(p) for k, p in job.paths.items()}
        wall = time.monotonic() - job.started
        report.update({"wall_seconds": round(wall, 3), **run_facts, "resumed": job.resumed,
                       "fingerprint": job.fingerprint})
        if job.estimate is not None:
            report["time_estimate"] = estimate_outcome(job.estimate, job.load_seconds + wall)
        report_name = job.paths["report"].name
        new = [p.name for k, p in job.paths.items() if k != "report"] + [report_name]
        kept = _same_run_outputs(job.folder / report_name, report, job.paths)  # e.g. the zarr of a run now asked for anndata too
        report["outputs"].update({k: str(p) for k, p in kept.items()})
        atomic_write_text(staged["report"], json.dumps(report, indent=1, default=str))
        old = [n for n in _previous_outputs(job.folder, report_name) if n not in {p.name for p in kept.values()}]
        job.journal.swap_in(new, old)
    foreign = job.journal.clear()
    if foreign:
        log(f"{job.plan.path.name}: left {len(foreign)} file(s) that promptnucseg did not make in {job.journal.work}")
    for warning in report["warnings"]:
        log(f"{job.plan.path.name}: warning: {warning}")
    return report


def estimate_outcome(first: TimeEstimate, real_s: float) -> dict[str, Any]:
    """The report's `time_estimate`: the plan's first estimate beside the real time, machine-readable
    (real_s counts the model's loading when this slide paid it, as the estimate does)."""
    ratio = round(real_s / first.seconds, 3) if first.seconds > 0 else None
    return {**first.record(), "real_s": round(real_s, 2), "real_over_estimate": ratio}


def measured_estimate(
    predictor: NucleusPredictor, reader: SlideReader, load_seconds: float = 0.0
) -> Callable[[SlideJob], TimeEstimate]:
    """The plan's time estimate from a test window of the slide through `predictor` (estimate.py);
    `load_seconds`, the model's loading, counts as time already spent."""

    def timing(job: SlideJob) -> TimeEstimate:
        job.load_seconds = load_seconds
        tiles = job.tiles_left()
        probe = probe_model(predictor, reader, job.plan, tiles)
        so_far = job.load_seconds + time.monotonic() - job.started
        return estimate(job.plan, tiles, so_far, probe, str(predictor.device))

    return timing


def segment_slide(
    path: str | Path, out_root: str | Path, predictor: NucleusPredictor, settings: SegmentSettings,
    log: Callable[[str], None] = print, load_seconds: float = 0.0,
) -> dict[str, Any]:
    """Segment one slide into `out_root/<stem>/`, holding that folder's lock throughout;
    resumes a killed run; returns the report. `load_seconds`: the command's time before this slide
    (the slides' checks, the model's loading), which its time estimate and real time count (the first slide)."""
    lock = lock_slide_folder(out_root, path, settings, log)
    try:
        return _segment_locked(path, out_root, predictor, settings, log, load_seconds)
    finally:
        lock.release()


def _segment_locked(
    path: str | Path, out_root: str | Path, predictor: NucleusPredictor, settings: SegmentSettings,
    log: Callable[[str], None], load_seconds: float = 0.0,
) -> dict[str, Any]:
    model = ModelFacts.of(predictor)
    with open_slide(path) as reader:
        job = prepare_slide(reader, out_root, model, settings, log, measured_estimate(predictor, reader, load_seconds))
        if job.finished_report is not None:
            return job.finished_report
        plan = job.plan
        done_nuclei = sum(int(rec.get("nuclei", 0)) for rec in job.journal.done().values())
        tiles = job.tiles_left()
        bar = SlideProgress(
            plan.path.name, len(plan.tiles), job.tiles_done(), plan.tissue_mm2, done_nuclei, settings.progress,
            windows_left=sum(tile_windows(plan, t) for t in tiles),
            window_s=job.estimate.window_s if job.estimate is not None and job.estimate.measured else None,
        )

        try:
            with disk_full_explained(job.folder):
                stats = run_batches(
                    reader, plan, range(len(plan.batches)), predictor, job.journal, settings,
                    lambda t, n: bar.batch_done(n, t),
                    lambda found, tile: bar.tile_done(found, tile_windows(plan, tile)),
                )
        except Interrupted as stop:
            stop.progress = (len(job.journal.done()), len(plan.batches))
            raise
        finally:
            bar.close()
    return finish_slide(
        job, model, settings,
        {
            "tiles_this_run": stats.tiles,
            **({
                "windows_this_run": stats.windows_run + stats.windows_skipped,
                "windows_skipped_no_tissue_this_run": stats.windows_skipped,
            } if stats.windows_run is not None else {}),
            "tiles_per_second": round(stats.tiles / stats.seconds, 3) if stats.seconds else None,
            "nuclei_per_second": round(stats.nuclei / stats.seconds, 3) if stats.seconds else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
        log,
    )


STATUS_COMPLETE = "complete"
STATUS_UNREADABLE = "complete with unreadable regions"  # the rest of the slide is segmented; see unreadable_regions


def unreadable_regions(journal: Journal, planning: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The blocks the planning reads and the batches could not read, once each (overlapping
    tiles name the same block)."""
    seen: dict[tuple, dict[str, Any]] = {}
    batches = [r for _, rec in sorted(journal.done().items()) for r in rec.get("unreadable") or []]
    for r in [*planning, *batches]:
        seen.setdefault((r["level"], tuple(r["box"])), r)
    return [seen[k] for k in sorted(seen, key=lambda k: (k[0], k[1][1], k[1][0]))]


def finalize(plan: SlidePlan, journal: Journal, model: ModelFacts, settings: SegmentSettings, paths: dict[str, Path], fp: dict[str, Any]) -> dict[str, Any]:
    """Write the final outputs by streaming the journaled parts in batch order."""
    from .exporters import write_anndata, write_geojson, write_label_tiff, write_table, write_zarr
    from .cells import iter_parts_with_cells, make_cells
    from .morphometrics import CELL_MEASUREMENTS, MEASUREMENTS

    palette = output_classes(plan.points, model.palette)
    names, colors = palette.names, palette.colors
    counts = {name: 0 for name in names}
    total = 0
    areas = []
    region_counts = np.zeros((len(plan.regions.regions) if plan.regions else 0, len(names)), np.int64)
    typed = None  # a typed model's class_summary (class_summary.py)
    if ClassSummaryBuilder.wanted(names):
        typed = ClassSummaryBuilder(names, plan.slide_mpp, plan.regions.labels() if plan.regions else None)
    for part in iter_parts(journal):
        total += len(part)
        areas.append(part.measurements["area_um2"])
        for c in part.classes:
            counts[names[int(c)]] += 1
        inside = plan.regions.inside(part.points) if plan.regions is not None and len(part) else None
        if inside is not None:  # every nucleus inside each region, overlaps counted in each
            for j, held in enumerate(inside.T):
                region_counts[j] += np.bincount(part.classes[held], minlength=len(names))[: len(names)]
        if typed is not None:
            typed.add(part.centroids, part.classes, part.measurements["area_um2"], inside)
    region_cols = (plan.regions.labels(), plan.regions.class_names()) if plan.regions is not None else None
    median_area = float(np.nanmedian(np.concatenate(areas))) if total else None
    ranges = model.ranges
    small = sum(int(rec.get("small_dropped", 0)) for rec in journal.done().values())
    unreadable = unreadable_regions(journal, plan.unreadable)
    cell_facts = make_cells(plan, journal, settings.cell_expansion_um) if settings.cell_expansion_um > 0 else None
    parts = (lambda: iter_parts_with_cells(journal)) if cell_facts is not None else (lambda: iter_parts(journal))
    meta = {
        "slide": str(plan.path),
        ZARR_SLIDE_MPP: plan.slide_mpp,
        "mpp_source": plan.mpp_source,
        "model_mpp": plan.model_mpp,
        "roi": list(plan.roi),
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
        "model": model.describe(),
        "settings": settings_record(settings),
        "versions": package_versions(),
        "config_hash": fingerprint_hash(fp),
        **({"cell_expansion_um": settings.cell_expansion_um} if cell_facts is not None else {}),
    }
    regions = None
    if plan.regions is not None:
        summary = region_summary(plan.regions, region_counts, names, plan.slide_mpp, plan.region_tissue_mm2)
        regions = {**plan.regions.describe(), "regions": summary}
        meta["regions"] = regions
    if "geojson" in paths:
        region_meta = plan.regions.metadata() if plan.regions is not None else None
        write_geojson(paths["geojson"], parts(), names, colors, gzip=settings.gzip, regions=region_meta)
    if "zarr" in paths:
        write_zarr(paths["zarr"], parts(), meta)
    if "table" in paths:
        paths["table"] = write_table(paths["table"], parts(), class_names=names, regions=region_cols)
    if "anndata" in paths:
        write_anndata(
            paths["anndata"], parts(), names, colors, plan.slide_mpp, meta, regions=region_cols,
            measurement_keys=[*MEASUREMENTS, *(CELL_MEASUREMENTS if cell_facts is not None else ())],
        )
    if "regions" in paths and regions is not None:
        write_region_table(paths["regions"], regions["regions"], names)
    if "label_map" in paths:
        write_label_tiff(paths["label_map"], (plan.dimensions[1], plan.dimensions[0]), iter_parts(journal))
    warnings = [*plan.warnings, *result_warnings(total, plan.tissue_mm2, median_area, plan.slide_mpp, plan.mpp_source, ranges)]
    if unreadable:
        warnings.append(
            f"{len(unreadable)} block(s) of the slide could not be decoded (corrupt image data in the file) and were segmented as blank: "
            + "; ".join(f"level {r['level']} level-0 box {','.join(str(v) for v in r['box'])}" for r in unreadable[:5])
            + (" ..." if len(unreadable) > 5 else "") + " (all in the report's unreadable_regions); re-export the slide to recover them"
        )
    return {
        "status": STATUS_UNREADABLE if unreadable else STATUS_COMPLETE,
        "unreadable_regions": unreadable,
        "slide": str(plan.path),
        "outputs": {k: str(v) for k, v in paths.items()},
        "nuclei": total,
        "class_counts": counts,
        "tiles": len(plan.tiles),
        "tiles_in_grid": len(plan.grid),
        "tiling": {
            "tile_size": plan.grid.tile_size, "step": plan.grid.stride, "overlap": plan.grid.real_overlap,
            "model_window_grid": list(plan.grid.window_grid) if plan.grid.window_grid else None,
            "seamless": plan.grid.seamless,
        },
        "batches": len(plan.batches),
        "tissue_fraction": round(plan.tissue_fraction, 4),
        "tissue_mm2": round(plan.tissue_mm2, 4),
        "nuclei_per_mm2_tissue": round(total / plan.tissue_mm2, 1) if plan.tissue_mm2 > 0 else None,
        "class_per_mm2_tissue": {k: round(v / plan.tissue_mm2, 1) for k, v in counts.items()} if plan.tissue_mm2 > 0 else None,
        "median_area_um2": None if median_area is None else round(median_area, 2),
        "small_masks_dropped": small,
        "min_nucleus_um2": plan.min_nucleus_um2,
        "plausible_ranges": asdict(ranges),
        "warnings": warnings,
        "stains": plan.stains.describe(),
        REPORT_SLIDE_MPP: plan.slide_mpp,
        "mpp_source": plan.mpp_source,
        "model_mpp": plan.model_mpp,
        "resampling": f"level-0 px per model px = {plan.scale:.4f}; tiles read from the level nearest to {plan.model_mpp} um/px and resampled",
        "slide_facts": plan.slide_facts,
        "config_hash": fingerprint_hash(fp),
        "model": model.describe(),
        "settings": settings_record(settings),
        "versions": package_versions(),
        "cell_expansion_um": settings.cell_expansion_um,
        **({"cells": cell_facts} if cell_facts is not None else {}),
        **({"points": points_report(plan.points, journal)} if plan.points is not None else {}),
        **({"regions": regions} if regions is not None else {}),
        **({"class_summary": typed.build()} if typed is not None else {}),
    }
