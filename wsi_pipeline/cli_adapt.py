"""`promptnucseg adapt`: teach the prompter a lab's slides from a pathologist's clicks.

In QuPath the person draws region annotations (rectangles, polygons) and clicks one point on
every nucleus inside them; *File > Export objects as GeoJSON* writes both to one file, which
is `--points` (or the points alone, with the regions in `--regions`). Each region is cut from
its slide at the model's microns per pixel and handed to the model through the interface
(`ClickedRegion`); the model side fine-tunes, measures on held-out cells and writes the file.
Everything is checked before the model loads: no regions, points outside every region, a
region without points, a slide without microns per pixel, a model without a prompter.
Written: OUT, its report `<OUT stem>.adapt.json` beside it and, while it runs, the resumable
state `OUT.partial` (a rerun with the same inputs and settings continues from it); nothing else.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_REGION_UM = 1500.0
FEW_HELD_OUT = 40  # held-out clicks below which the before/after figure is noise (docs/adapting.md)  # a region wider than this is not one a person clicks completely


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="the slides the points were clicked on")
    parser.add_argument("--points", nargs="+", required=True, metavar="P.geojson",
                        help="QuPath GeoJSON export (points + region annotations) or CSV of points, one per slide, in the slides' order")
    parser.add_argument("--regions", nargs="+", metavar="R.geojson", help="region annotations, one file per slide, when --points holds none")
    parser.add_argument("--out", required=True, metavar="ADAPTED.pt", help="the adapted model file to write (use it as --model ADAPTED.pt)")
    parser.add_argument("--model", default="default", help="the model to adapt: a bundled name (default, typed) or a model file (default: default)")
    parser.add_argument("--minutes", type=float, default=10.0, help="fine-tuning time budget in minutes (default 10)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps even if time is left")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel for slides that do not record it")
    parser.add_argument("--empty-regions-ok", action="store_true", help="a region with no points means 'no nuclei here' (otherwise refused)")
    parser.add_argument("--force", action="store_true", help="write the model even if it did worse on the held-out clicks")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class SlideClicks:
    """One slide's clicked regions, cut at the model's resolution, and what they came from."""

    slide: str
    regions: list[Any]  # interface.ClickedRegion
    record: dict[str, Any]


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".adapt.json")


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_out(out: Path, overwrite: bool) -> None:
    from .errors import PipelineInputError

    if out.suffix != ".pt":
        raise PipelineInputError(out, "is not a .pt file name", "name the adapted model file ADAPTED.pt")
    if not out.parent.is_dir():
        raise PipelineInputError(out, f"its folder {out.parent} does not exist", "create the folder first, or write --out elsewhere")
    if out.exists() and not overwrite:
        raise PipelineInputError(out, "exists already (an earlier adaptation is kept)", "pass another --out, or --overwrite to replace it")


def _class_index(labels: list[str], class_names: tuple[str, ...], path: Path) -> np.ndarray:
    """Points' classes as model class indices: a one-class model takes any label; a typed model's
    labels must name its classes (unlabelled points are refused: the type is what it learns)."""
    from .errors import PipelineInputError

    if len(class_names) == 1:
        return np.zeros(len(labels), np.int64)
    lower = {n.lower(): i for i, n in enumerate(class_names)}
    unknown = sorted({lab for lab in labels if lab.lower() not in lower})
    if unknown:
        raise PipelineInputError(path, f"points of classes {unknown[:5]} that the model does not have (it has {', '.join(class_names)})",
                                 "set each point's class in QuPath to one of the model's classes")
    return np.array([lower[lab.lower()] for lab in labels], np.int64)


def cut_regions(slide: Path, points_file: Path, regions_file: Path, model_mpp: float, class_names: tuple[str, ...], mpp: float | None, empty_ok: bool) -> SlideClicks:
    """Open the slide, read and check its clicks and regions, and cut each region at `model_mpp`."""
    import shapely

    from promptnucseg.models.interface import ClickedRegion

    from .errors import PipelineInputError
    from .jail import slide_identity
    from .points import read_points
    from .regions import check_regions, read_regions
    from .slides import open_slide, resolve_mpp

    reader = open_slide(slide, mpp_override=mpp)
    slide_mpp, mpp_source = resolve_mpp(reader, mpp)
    points = read_points(points_file)
    regions = check_regions(read_regions(regions_file), reader.dimensions, None)
    keep = ~points.ignore
    xy, labels = points.xy[keep], [lab for lab, k in zip(points.labels, keep) if k]
    held = regions.inside(xy)
    outside = int((~held.any(1)).sum()) if len(xy) else 0
    if outside:
        raise PipelineInputError(points_file, f"{outside} of {len(xy)} points lie outside every region of {regions_file.name}",
                                 "draw a region annotation around every clicked area (or delete the stray points), then export again")
    counts = held.sum(0) if len(xy) else np.zeros(len(regions.regions), int)
    empty = [r.label for r, c in zip(regions.regions, counts) if c == 0]
    if empty and not empty_ok:
        raise PipelineInputError(regions_file, f"regions {empty[:5]} hold no points", "click every nucleus in them, or pass --empty-regions-ok if they truly hold none")
    classes = _class_index(labels, class_names, points_file)
    scale = model_mpp / slide_mpp  # level-0 px per model px
    out = []
    for r, hit in zip(regions.regions, held.T if len(xy) else [np.zeros(0, bool)] * len(regions.regions)):
        x0, y0, x1, y1 = r.geometry.bounds
        if max(x1 - x0, y1 - y0) * slide_mpp > MAX_REGION_UM:
            raise PipelineInputError(regions_file, f"region '{r.label}' is {(x1 - x0) * slide_mpp:.0f} x {(y1 - y0) * slide_mpp:.0f} um, more than a person clicks completely (limit {MAX_REGION_UM:.0f} um)",
                                     "draw smaller regions around the areas you clicked")
        bx, by = math.floor(x0), math.floor(y0)
        image, s = reader.read_at_mpp(bx, by, max(1, math.ceil(x1) - bx), max(1, math.ceil(y1) - by), model_mpp)
        h, w = image.shape[:2]
        gx, gy = np.meshgrid(bx + (np.arange(w) + 0.5) * s, by + (np.arange(h) + 0.5) * s)
        inside = shapely.contains_xy(r.geometry, gx.ravel(), gy.ravel()).reshape(h, w)
        pts = (xy[hit] - [bx, by]) / s - 0.5
        out.append(ClickedRegion(f"{slide.name}:{r.label}", image, inside, pts.astype(np.float32), classes[hit]))
    record = {**slide_identity(slide), "mpp": slide_mpp, "mpp_source": mpp_source, "points": {"file": str(points_file.resolve()), "sha256": points.sha256, "used": int(len(xy)), "ignored": int((~keep).sum())},
              "regions": {**regions.describe(), "clicked": {r.label: int(c) for r, c in zip(regions.regions, counts)}}, "scale": scale}
    return SlideClicks(str(slide), out, record)


def run(args: argparse.Namespace) -> int:
    from promptnucseg.errors import FixableError

    try:
        return _run(args)
    except FixableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from promptnucseg.models.interface import adapt_model, adaptable_model

    from .errors import PipelineInputError

    out = Path(args.out)
    check_out(out, args.overwrite)
    slides = [Path(s) for s in args.slides]
    points = [Path(p) for p in args.points]
    regions = [Path(p) for p in args.regions] if args.regions else points
    for what, files in (("--points", points), ("--regions", regions)):
        if len(files) != len(slides):
            raise PipelineInputError(None, f"{len(slides)} slides but {len(files)} {what} files", f"give one {what} file per slide, in the slides' order")
    for f in [*slides, *points, *regions]:
        if not f.is_file():
            raise PipelineInputError(f, "does not exist", "check the path")
    if not (args.minutes > 0):
        raise PipelineInputError(None, f"--minutes {args.minutes} is not a positive time", "give the fine-tuning budget in minutes, e.g. --minutes 10")
    model = adaptable_model(args.model)
    clicks = [cut_regions(s, p, r, model.mpp, model.class_names, args.mpp, args.empty_regions_ok) for s, p, r in zip(slides, points, regions)]
    cut = [r for c in clicks for r in c.regions]
    n_points = sum(len(r.points) for r in cut)
    if n_points == 0:
        raise PipelineInputError(points[0], "holds no clicked nuclei inside its regions", "click one point on every nucleus inside each region")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = {"minutes": args.minutes, "max_steps": args.max_steps, "seed": args.seed}
    fingerprint = hashlib.sha256(json.dumps([model.sha256, [c.record for c in clicks], settings], sort_keys=True, default=str).encode()).hexdigest()
    print(f"adapt: {n_points} clicked nuclei in {len(cut)} regions of {len(slides)} slide(s) at {model.mpp} um/px; "
          f"fine-tuning {Path(model.path).name} for up to {args.minutes:g} min", file=sys.stderr)
    bar = _Bar(args.minutes * 60, disabled=args.no_progress)
    provenance = {"slides": [c.record for c in clicks], "command": sys.argv[1:] if sys.argv else []}
    started = time.monotonic()
    report, written = adapt_model(model, cut, str(out), **settings, force=args.force, progress=bar.update, state_path=str(state_path(out)),
                                  fingerprint=fingerprint, provenance=provenance, device=args.device)
    bar.close()
    report = {"written": written, "out": str(out.resolve()) if written else None, "source_model": {"file": model.path, "sha256": model.sha256},
              **report, "slides": provenance["slides"], "wall_minutes": round((time.monotonic() - started) / 60, 2)}
    report_path(out).write_text(json.dumps(report, indent=2))
    b, a = report["held_out_before"], report["held_out_after"]
    line = (f"held-out clicks ({report['held_out_points']}): detection precision {b['precision']:.3f} -> {a['precision']:.3f}, "
            f"recall {b['recall']:.3f} -> {a['recall']:.3f}, F1 {b['f1']:.3f} -> {a['f1']:.3f}")
    if report["held_out_points"] < FEW_HELD_OUT:
        print(f"warning: only {report['held_out_points']} clicks were held out, too few to tell a better model from a worse one "
              "(docs/adapting.md); click 100 or more in several regions", file=sys.stderr)
    if not written:
        print(f"{line}; NOT written: the adapted prompter did worse on the held-out clicks. Fix: click more regions (or check the clicks), "
              f"or pass --force to write it anyway (report: {report_path(out)})", file=sys.stderr)
        return 3
    state_path(out).unlink(missing_ok=True)
    print(f"{line}; wrote {out} (use it as --model {out}; report: {report_path(out)})")
    return 0


class _Bar:
    """Progress over the time budget: steps done, elapsed, and the time left as the ETA."""

    def __init__(self, budget_s: float, disabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=round(budget_s), unit="s", desc="adapt", disable=disabled, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s, left {remaining} {postfix}")
        self.done = 0.0

    def update(self, step: int, elapsed: float, budget: float, last: dict[str, float]) -> None:
        new = min(elapsed, budget)
        self.bar.update(new - self.done)
        self.done = new
        self.bar.set_postfix_str(f"step {step}, loss {last.get('loss', float('nan')):.3f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
