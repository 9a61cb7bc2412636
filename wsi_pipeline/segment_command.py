"""`promptnucseg segment SLIDE [SLIDE ...] --out DIR`: the overnight job.

One failing slide is reported in one line and the others go on; the exit status is
non-zero if any slide failed. Each slide gets its own folder with the outputs and a JSON
run report; a killed run resumes where it stopped when run again with the same --out.
With --scheduler or --cluster the batches run on dask workers (see distributed.py) and the
outputs are the same bytes as a single-process run's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .segment import SlideResult


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("slides", nargs="*", metavar="SLIDE", help="slide files (svs, ndpi, mrxs, scn, tiff, ome.tiff, png, jpg)")
    parser.add_argument("--out", required=True, help="output folder; one sub-folder per slide")
    parser.add_argument("--sample", action="store_true", help="add the bundled sample slide (CMU-1-Small-Region, Aperio SVS) to the inputs")
    parser.add_argument("--model", "--weights", dest="weights", help="model file: a promptnucseg model (export-model), a segmentor, or an official sam_vit_b/l/h checkpoint; default: the bundled model")
    parser.add_argument("--prompter-weights", help="prompter to pair with a segmentor/SAM file given by --weights")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per model call and per journaled batch (default 8)")
    parser.add_argument("--workers", type=int, default=4, help="tile-reading threads (default 4)")
    parser.add_argument("--tile-size", type=int, default=1024, help="tile size in model pixels, multiple of 32 (default 1024); sizes of 256 + a multiple of the model's window step (192 for the bundled model: 1024, 1216, 1408...) keep tiled masks equal to a one-pass run")
    parser.add_argument("--overlap", type=int, default=128, help="least tile overlap in model pixels, larger than the largest nucleus (default 128); the tile step is rounded down to the model's window grid, so the real overlap can be larger (the run report's 'tiling')")
    parser.add_argument("--mpp", type=float, help="microns per pixel of the slide's level 0: overrides (or supplies missing) metadata")
    parser.add_argument("--roi", help="x,y,w,h in level-0 pixels: segment only this region")
    parser.add_argument("--formats", default="geojson,zarr,table", help="comma list of geojson, zarr, table, anndata (default: geojson,zarr,table; anndata writes <stem>.h5ad and needs promptnucseg[anndata])")
    parser.add_argument("--label-map", action="store_true", help="also write <stem>_labels.tif, the level-0 instance label map (small inputs only)")
    parser.add_argument("--gzip", action="store_true", help="write .geojson.gz")
    parser.add_argument("--no-tissue-mask", action="store_true", help="process every tile, even where no tissue is found")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier progress/outputs for these slides and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on the dask workers of this scheduler (e.g. tcp://10.0.0.5:8786); they must see the slides and --out at the same paths")
    where.add_argument("--cluster", metavar="local:N", help="start N dask worker processes on this machine (local: one per GPU, or one per 4 cores without GPU)")


def run(args: argparse.Namespace) -> int:
    from promptnucseg.models.interface import load_predictor
    from .errors import PipelineInputError
    from .runner import FORMATS, SegmentSettings
    from .exporters.atomic import ensure_output_folder
    from .segment import SlideResult, describe_failure, segment_slide
    from .slides import parse_roi

    slides = [Path(s) for s in args.slides]
    try:
        if args.sample:
            from .sample import sample_slide

            slides.append(sample_slide())
        if not slides:
            print("error: no slides given. Fix: name slide files, or pass --sample", file=sys.stderr)
            return 2
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            print(f"error: unknown --formats {','.join(bad)}. Fix: choose from {','.join(FORMATS)}", file=sys.stderr)
            return 2
        if "anndata" in formats:  # its extra is optional: say so now, not after the slides are segmented
            from .exporters.anndata_export import require_anndata

            require_anndata()
        stems = [s.stem for s in slides]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            print(f"error: several inputs are named {', '.join(dupes)}; their outputs would collide. Fix: run them with different --out folders", file=sys.stderr)
            return 2
        out = Path(args.out)
        ensure_output_folder(out / ".run")
        settings = SegmentSettings(
            tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, workers=args.workers, mpp=args.mpp,
            roi=parse_roi(args.roi) if args.roi else None, formats=formats, label_map=args.label_map, gzip=args.gzip,
            use_tissue_mask=not args.no_tissue_mask, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (PipelineInputError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.scheduler or args.cluster:
        from .distributed import ModelSpec, run_distributed

        spec = ModelSpec(args.weights, args.prompter_weights, args.device, args.batch_size)
        try:
            results = run_distributed(slides, out, settings, spec, scheduler=args.scheduler, cluster=args.cluster, on_result=_print_result)
        except (PipelineInputError, ValueError, RuntimeError, OSError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        failed = [r.slide for r in results if not r.ok]
    else:
        try:
            predictor = load_predictor(args.weights, device=args.device, prompter_weights=args.prompter_weights, batch_size=args.batch_size)
        except (PipelineInputError, ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        failed = []
        for slide in slides:
            try:
                report = segment_slide(slide, out, predictor, settings, log=lambda m: print(m, file=sys.stderr))
                _print_result(SlideResult(str(slide), True, report))
            except Exception as err:  # one broken slide must not end an overnight run
                _print_result(SlideResult(str(slide), False, {}, describe_failure(slide, err)))
                failed.append(slide)
    if failed:
        print(f"{len(failed)} of {len(slides)} slides failed: {', '.join(str(s) for s in failed)}", file=sys.stderr)
        return 1
    return 0


def _print_result(result: SlideResult) -> None:
    """A finished slide as one JSON line on stdout; a failed one as one error line on stderr."""
    if result.ok:
        print(json.dumps({"slide": result.slide, "nuclei": result.report["nuclei"], "report": result.report["outputs"]["report"]}))
    else:
        print(f"error: {result.error}", file=sys.stderr)
