"""`promptnucseg report OUTDIR`: pictures and one HTML page for a finished segment run.

Renders each finished slide's overlay, density map, area histogram and class counts
beside its JSON report (slides whose pictures are up to date are skipped), then writes
OUTDIR/report.html and prints its path. Failed and unfinished slides are listed as such.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("out_dir", metavar="OUTDIR", help="the --out folder of a `promptnucseg segment` run")
    parser.add_argument("--max-side", type=int, default=2048, help="longest side of the slide overview pictures in pixels (default 2048)")
    parser.add_argument("--force", action="store_true", help="redraw pictures even when they are up to date")


def run(args: argparse.Namespace) -> int:
    from .errors import PipelineInputError
    from .report import render_run_report

    if args.max_side < 64:
        print(f"error: --max-side {args.max_side} is too small for a readable picture. Fix: give 64 or more (default 2048)", file=sys.stderr)
        return 2
    try:
        page = render_run_report(Path(args.out_dir), args.max_side, force=args.force, log=lambda m: print(m, file=sys.stderr))
    except PipelineInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(page)
    return 0
