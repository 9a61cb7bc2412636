"""`promptnucseg segment SLIDE [SLIDE ...] --out DIR`: the overnight job.

One failing slide is reported in one line and the others go on; the exit status is
non-zero if any slide failed. Each slide gets its own folder with the outputs and a JSON
run report; a killed run resumes where it stopped when run again with the same --out.
With --scheduler or --cluster the batches run on dask workers (see distributed/) and the
outputs are the same bytes as a single-process run's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from promptnucseg.models.interface import RELEASE_PRESETS, TILE_ALIGN
from . import flags
from .model_spec import DEFAULT_BATCH_SIZE
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

EXIT_LOCKED = 75  # EX_TEMPFAIL: only slides held by another run were refused; retry later

if TYPE_CHECKING:
    from .plan import SegmentSettings
    from .segment import SlideResult


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("slides", nargs="*", metavar="SLIDE", help="slide files (svs, ndpi, mrxs, scn, tiff, ome.tiff, png, jpg), or folders of them (see --pattern)")
    parser.add_argument("--pattern", default="*", help="for a folder given as SLIDE: the file names to take, a glob (default *: every slide file in it, not its sub-folders; e.g. '*.svs')")
    parser.add_argument("--out", required=True, help="output folder; one sub-folder per slide")
    parser.add_argument("--sample", action="store_true", help="add the bundled sample slide (CMU-1-Small-Region, Aperio SVS) to the inputs")
    parser.add_argument("--model", "--weights", dest="weights", help="a bundled model by name (default, typed: `promptnucseg models`), or a model file: a promptnucseg model (export-model), a segmentor, or an official sam_vit_b/l/h checkpoint; default: the bundled default")
    parser.add_argument("--prompter-weights", help="prompter to pair with a segmentor/SAM file given by --weights (ours, or the PromptNucSeg release's best.pth/latest.pth)")
    parser.add_argument("--preset", choices=RELEASE_PRESETS, help="run with the PromptNucSeg release's settings for this data set (default: read from release files; none for ours)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: masks averaged over 8 flips/turns of each window (slower; see README for the gain)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--batch-size", type=flags.BATCH_SIZE, default=DEFAULT_BATCH_SIZE,
        help=f"tiles per journaled batch: the unit a killed run resumes from and a dask task counts in; also the default of "
        f"--window-batch (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--window-batch", type=flags.WINDOW_BATCH,
        help="windows per forward pass of each network (the model sees a tile through small windows); more uses more memory "
        "and helps most on a GPU (default: the --batch-size value)",
    )
    parser.add_argument("--workers", type=flags.WORKERS, default=4, help="tile-reading threads (default 4)")
    parser.add_argument(
        "--tile-size", type=flags.TILE_SIZE, default=DEFAULT_TILE_SIZE,
        help=f"tile size in model pixels, a multiple of {TILE_ALIGN} (default {DEFAULT_TILE_SIZE}); sizes of the model's window plus a "
        "multiple of its window step (the run report's tiling.model_window_grid; the default is one for the bundled models) "
        "keep tiled masks equal to a one-pass run",
    )
    parser.add_argument(
        "--overlap", type=flags.OVERLAP, default=DEFAULT_OVERLAP,
        help=f"least tile overlap in model pixels, larger than the largest nucleus (default {DEFAULT_OVERLAP}); the tile step is "
        "rounded down to the model's window grid, so the real overlap can be larger (the run report's 'tiling')",
    )
    parser.add_argument("--mpp", type=flags.MPP, help="microns per pixel of the slide's level 0: overrides (or supplies missing) metadata; refused outside 0.05-10, and slides coarser than 2 (nuclei need ~0.5 or finer), unless --force-mpp")
    parser.add_argument("--force-mpp", action="store_true", help="accept an --mpp outside the plausible 0.05-10 um/px, and a slide coarser than 2 um/px (warned)")
    parser.add_argument("--roi", help="x,y,w,h in level-0 pixels: segment only this region")
    parser.add_argument(
        "--regions", metavar="FILE",
        help="QuPath's GeoJSON export of annotations (polygons, holes respected): keep only nuclei whose prompt lies in one; "
        "each nucleus records its region, the report and <stem>_regions.csv give per-region area, counts and densities; "
        "one slide; with --roi, only the parts of the regions inside --roi count",
    )
    parser.add_argument(
        "--cell-expansion", type=flags.cell_expansion, default=0.0, metavar="UM",
        help="also make cells: grow each nucleus by up to UM µm (e.g. 5), never into a neighbour's cell, "
        "within the tissue "
        "(QuPath's and StarDist's meaning); GeoJSON features become QuPath cell objects; cell and cytoplasm "
        "measurements in every output (docs/cells.md); default 0: nuclei only",
    )
    parser.add_argument("--formats", default="geojson,zarr,table", help="comma list of geojson, zarr, table, anndata (default: geojson,zarr,table; anndata writes <stem>.h5ad and needs promptnucseg[anndata])")
    parser.add_argument("--label-map", action="store_true", help="also write <stem>_labels.tif, the level-0 instance label map (small inputs only)")
    parser.add_argument("--gzip", action="store_true", help="write .geojson.gz")
    parser.add_argument("--no-tissue-mask", action="store_true", help="process every tile, even where no tissue is found")
    parser.add_argument("--overwrite", action="store_true", help="start these slides again, discarding earlier progress; a finished result (needed to change its settings) is replaced only once the new one is complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--wait-for-lock", action="store_true", help="when another run is writing a slide's output folder, wait for it instead of refusing that slide (exit 75 when only such slides were refused)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--points", metavar="FILE", help="segment exactly these points, one nucleus each, instead of running the prompter: QuPath's GeoJSON export of point annotations, or a CSV of x,y[,class]; level-0 px; one slide")
    given.add_argument("--add-points", metavar="FILE", help="corrections on top of the prompter: these points are added (a prompter point within its NMS radius yields), points classed Ignore* delete the nucleus they fall in")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on the dask workers of this scheduler (e.g. tcp://10.0.0.5:8786); they must see the slides and --out at the same paths")
    where.add_argument("--cluster", metavar="local:N", help="start N dask worker processes on this machine (local: one per GPU, or one per 4 cores without GPU)")


def run(args: argparse.Namespace) -> int:
    """Exit 0: all done; 1: some slide failed; 2: bad flags or setup; 75: the only failures were
    slides held by another run (retry later); 130 / 143: stopped by SIGINT / SIGTERM (resumable)."""
    from .interrupts import Interrupted, handled

    with handled():
        try:
            return _run(args)
        except Interrupted as stop:
            print(stop.message(), file=sys.stderr)
            return stop.exit_status


@dataclass
class RunOutcome:
    """What one `segment` invocation did: its exit status and every slide's result, in order
    (refused slides first). `promptnucseg.segment_slide` returns from here; the CLI prints."""

    status: int
    results: list["SlideResult"] = field(default_factory=list)


def _run(args: argparse.Namespace) -> int:
    from .errors import PipelineInputError

    try:
        return execute(args, _print_result).status
    except (PipelineInputError, ValueError, RuntimeError, OSError, TimeoutError) as err:  # setup: flags, files, model
        print(f"error: {err}", file=sys.stderr)
        return 2


def _check_flags(args: argparse.Namespace) -> None:
    """What argparse cannot check one flag at a time; before the model loads."""
    from .errors import PipelineInputError
    from .preflight import check_tile_memory
    from .slides import implausible_mpp

    if args.overlap >= args.tile_size:
        raise PipelineInputError(None, f"--overlap {args.overlap} is not smaller than --tile-size {args.tile_size}", f"use an --overlap below the tile size (default {DEFAULT_OVERLAP} for {DEFAULT_TILE_SIZE}-px tiles)")
    if args.mpp is not None and not args.force_mpp:
        err = implausible_mpp(args.mpp, "override")
        if err is not None:
            raise err
    check_tile_memory(args.tile_size, args.batch_size)


def _check_points(path: str, slides: list[Path], roi: tuple[int, int, int, int] | None) -> None:
    """A points file belongs to one slide; check it against that slide before the model loads."""
    from .errors import PipelineInputError
    from .points import check_points, read_points
    from .slides import open_slide

    if len(slides) != 1:
        raise PipelineInputError(path, f"a points file belongs to one slide, but {len(slides)} were given", "run each slide with its own --points/--add-points file")
    points = read_points(path)
    with open_slide(slides[0]) as reader:
        check_points(points, reader.dimensions, roi)


def _check_regions(path: str, slides: list[Path], roi: tuple[int, int, int, int] | None) -> None:
    """A regions file is drawn on one slide; check it against that slide before the model loads."""
    from .errors import PipelineInputError
    from .regions import load_plan_regions
    from .slides import open_slide

    if len(slides) != 1:
        raise PipelineInputError(
            path, f"a regions file belongs to one slide, but {len(slides)} were given", "run each slide with its own --regions file"
        )
    with open_slide(slides[0]) as reader:
        load_plan_regions(path, reader.dimensions, roi)


def _refuse_locked(slides: list[Path], out: Path, on_result: Callable[["SlideResult"], None]) -> list["SlideResult"]:
    """Slides whose folders a live run holds, refused (one line each) before the model loads;
    the others still take their lock properly when their turn comes."""
    from .locking import FolderLock
    from .outputs import slide_folder
    from .segment import failed_result

    refused = []
    for slide in slides:
        lock = FolderLock(slide_folder(out, slide))
        holder = lock.held_by()
        if holder is not None:
            refused.append(failed_result(slide, lock.refusal(holder)))
            on_result(refused[-1])
    return refused


def _refuse_unusable(
    slides: list[Path], settings: "SegmentSettings", on_result: Callable[["SlideResult"], None]
) -> list["SlideResult"]:
    """Slides that cannot run (unreadable, no or implausible mpp, bad region, black, no tissue,
    grayscale), refused one line each before the model loads; the rest go on."""
    from .plan import check_slide
    from .segment import failed_result
    from .slides import open_slide

    refused = []
    for slide in slides:
        try:
            with open_slide(slide) as reader:
                check_slide(reader, settings)
        except Exception as err:  # the same one-line message segment_slide would give
            refused.append(failed_result(slide, err))
            on_result(refused[-1])
    return refused


def slides_in(given: list[str], pattern: str = "*") -> list[Path]:
    """The slides named, with each folder replaced by its slide files matching `pattern` (sorted, not recursive)."""
    from .errors import PipelineInputError
    from .slides import SUPPORTED_EXTENSIONS

    out: list[Path] = []
    for name in given:
        path = Path(name)
        if not path.is_dir() or path.suffix.lower() in SUPPORTED_EXTENSIONS:  # a MIRAX slide's folder is named by its .mrxs
            out.append(path)
            continue
        found = sorted(f for f in path.glob(pattern) if f.is_file() and f.suffix.lower() in SUPPORTED_EXTENSIONS)
        if not found:
            raise PipelineInputError(path, f"is a folder with no slide files matching --pattern {pattern!r}",
                                     f"put slides ({' '.join(SUPPORTED_EXTENSIONS)}) in it, or give a --pattern that matches them")
        out += found
    return out


def execute(args: argparse.Namespace, on_result: Callable[["SlideResult"], None] = lambda r: None) -> RunOutcome:
    """The `segment` command: refusals, then each slide (or the dask run); `on_result` sees each
    slide's result as it comes. Setup errors (bad flags, files, model) raise: the CLI exits 2."""
    started = time.monotonic()  # the first slide's estimate and real time count the checks and loading before it
    from .errors import PipelineInputError
    from .model_spec import ModelSpec
    from .plan import FORMATS, SegmentSettings
    from .atomic import ensure_output_folder
    from .segment import SlideResult, failed_result, segment_slide
    from .slides import parse_roi

    slides = slides_in(args.slides, args.pattern)
    if args.sample:
        from .sample import sample_slide

        slides.append(sample_slide())
    if not slides:
        raise PipelineInputError(None, "no slides given", "name slide files, or pass --sample")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise PipelineInputError(None, f"unknown --formats {','.join(bad)}", f"choose from {','.join(FORMATS)}")
    if "anndata" in formats:  # its extra is optional: say so now, not after the slides are segmented
        from .exporters.anndata_export import require_anndata

        require_anndata()
    # the same file twice would race for its own folder; different files with one stem get <stem>, <stem>~2 (jail.py)
    real = [str(s.resolve()) for s in slides]
    dupes = sorted({str(s) for s, r in zip(slides, real) if real.count(r) > 1})
    if dupes:
        raise PipelineInputError(
            None, f"the same slide is given more than once ({', '.join(dupes)})", "name each slide once"
        )
    _check_flags(args)
    out = Path(args.out)
    ensure_output_folder(out / ".run")
    refused = [] if args.wait_for_lock else _refuse_locked(slides, out, on_result)
    total = len(slides)
    slides = [s for s in slides if str(s) not in {r.slide for r in refused}]
    if not slides:  # every slide is held by another run: no need to load the model
        print(f"{total} of {total} slides are held by other runs", file=sys.stderr)
        return RunOutcome(EXIT_LOCKED, refused)
    points = args.points or args.add_points
    roi = parse_roi(args.roi) if args.roi else None
    if points:
        _check_points(points, slides, roi)
    if args.regions:
        _check_regions(args.regions, slides, roi)
    settings = SegmentSettings(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, workers=args.workers, mpp=args.mpp,
        roi=roi, formats=formats, label_map=args.label_map, gzip=args.gzip,
        use_tissue_mask=not args.no_tissue_mask, overwrite=args.overwrite, progress=not args.no_progress,
        force_mpp=args.force_mpp, wait_for_lock=args.wait_for_lock,
        points=str(Path(points).resolve()) if points else None, points_mode="only" if args.points else "add",
        regions=str(Path(args.regions).resolve()) if args.regions else None,
        cell_expansion_um=float(getattr(args, "cell_expansion", 0.0) or 0.0),
    )
    unusable = _refuse_unusable(slides, settings, on_result)
    slides = [s for s in slides if str(s) not in {r.slide for r in unusable}]
    refused += unusable
    if not slides:  # nothing can run: no need to load the model
        print(f"{len(refused)} of {total} slides failed: {', '.join(r.slide for r in refused)}", file=sys.stderr)
        return RunOutcome(EXIT_LOCKED if all(r.locked for r in refused) else 1, refused)
    results = list(refused)
    spec = ModelSpec.from_flags(args)
    if args.scheduler or args.cluster:
        from .distributed import run_distributed

        results += run_distributed(
            slides, out, settings, spec, scheduler=args.scheduler, cluster=args.cluster, on_result=on_result
        )
    else:
        predictor = spec.load()
        load_seconds = time.monotonic() - started  # checks of every slide and the model's loading
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        for slide in slides:
            try:
                report = segment_slide(slide, out, predictor, settings, log=log, load_seconds=load_seconds)
                result = SlideResult(str(slide), True, report)
            except Exception as err:  # one broken slide must not end an overnight run
                result = failed_result(slide, err)
            on_result(result)
            results.append(result)
            load_seconds = 0.0
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {total} slides failed: {', '.join(r.slide for r in failed)}", file=sys.stderr)
        return RunOutcome(EXIT_LOCKED if all(r.locked for r in failed) else 1, results)
    return RunOutcome(0, results)


def _print_result(result: SlideResult) -> None:
    """A finished slide as one JSON line on stdout; a failed one as one error line on stderr."""
    if result.ok:
        given = result.report.get("points")
        extra = {"points_without_nucleus": given["without_nucleus"]} if given else {}
        if result.report.get("unreadable_regions"):  # "complete with unreadable regions": say so on the line
            extra.update(status=result.report["status"], unreadable_regions=len(result.report["unreadable_regions"]))
        print(json.dumps({"slide": result.slide, "nuclei": result.report["nuclei"], **extra, "report": result.report["outputs"]["report"]}))
    else:
        print(f"error: {result.error}", file=sys.stderr)
