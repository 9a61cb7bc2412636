"""The run's HTML page (`report.html`): a summary, a link per slide, one section per slide.

The markup lives in `templates/run_report.html.j2`, rendered by Jinja2 with autoescape on,
so every value from a report (slide names, errors, paths) reaches the page as text. This
module only gathers the values: rows of (label, value, small print), class counts, links.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from promptnucseg.models.interface import weights_licence
from ..errors import PipelineInputError
from ..atomic import atomic_file
from ..outputs import REPORT_SUFFIX
from .run_reader import SlideEntry, find_slides, pictures_up_to_date
from .slide import render_slide_report

TEMPLATES = Path(__file__).parent / "templates"
Row = tuple[str, str, "str | None"]  # label, value, small print after the value


def render_run_report(out_dir: Path, max_side: int = 2048, *, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Render every finished slide's pictures (skipping up-to-date ones unless `force`),
    then write `out_dir/report.html` and return its path. A slide whose pictures fail is
    listed with the reason; the others go on."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise PipelineInputError(out_dir, "is not a folder", "pass the --out folder of a `promptnucseg segment` run")
    path = out_dir / "report.html"
    if path.is_dir() or path.is_symlink():  # a slide folder of an earlier version (slide report.html.png), or a link
        raise PipelineInputError(path, "is a folder or a link, not the page this command writes", f"rename it (e.g. to report%2Ehtml, the name this version gives a slide called report.html) and run `promptnucseg report {out_dir}` again")
    entries = find_slides(out_dir)
    if not any(e.state == "finished" for e in entries):
        raise PipelineInputError(out_dir, f"has no finished slide (no <stem>/<stem>{REPORT_SUFFIX} with status complete)", "pass the --out folder of a `promptnucseg segment` run, or wait until a slide has finished")
    for e in entries:
        if e.state != "finished":
            continue
        try:
            started = time.monotonic()
            fresh = not force and pictures_up_to_date(e.folder, max_side)
            files = render_slide_report(e.folder, max_side, skip_up_to_date=not force)
            e.pictures = json.loads(files["pictures"].read_text())
            if log:
                log(f"{e.stem}: pictures {'up to date' if fresh else f'rendered in {time.monotonic() - started:.1f} s'}")
        except Exception as err:  # one broken store must not hide the other slides
            e.problem = f"pictures could not be drawn: {err}"
            if log:
                log(f"{e.stem}: {e.problem}")
    with atomic_file(path) as tmp:
        tmp.write_text(run_report_html(out_dir, entries), encoding="utf-8")
    return path


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    h, rest = divmod(int(round(s)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def _model_name(report: dict[str, Any]) -> str:
    model = report.get("model")
    if not isinstance(model, dict):
        return str(model) if model else "—"
    name = str(model.get("model") or "—")
    weights = model.get("weights")
    return f"{name} ({Path(str(weights)).name})" if weights else name


def _href(path: Path, base: Path) -> str | None:
    """A link to `path` from the page in `base`: relative, inside `base`, percent-encoded and
    starting with `./`, so no name (`javascript:...`, `#`, `?`, spaces, non-ASCII) is read as a
    scheme, a fragment or a query; None for anything outside `base` or not there."""
    rel = os.path.relpath(path, base).replace(os.sep, "/")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or not os.path.lexists(path):
        return None
    if not Path(path).resolve().is_relative_to(Path(base).resolve()):
        return None
    return "./" + quote(rel.encode("utf-8", "surrogateescape"), safe="/")


def anchor(stem: str) -> str:
    """The `#` link to a slide's section, whose id is the stem itself: percent-encoded, which a
    browser decodes before it looks for the id (so `#`, spaces and non-ASCII names work)."""
    return "#" + quote(stem.encode("utf-8", "surrogateescape"), safe="")


def _accuracy(r: dict[str, Any]) -> Row:
    """The model's own validation figures, as the model file records them."""
    metrics = (r.get("model") or {}).get("metrics") if isinstance(r.get("model"), dict) else None
    if not isinstance(metrics, dict):
        return ("model accuracy", "—", None)
    parts = []
    val = metrics.get("validation") or {}
    if val.get("pq") is not None and val.get("aji") is not None:  # the model's whole-image scores, when its file has them
        parts.append(f"PQ {float(val['pq']):.2f}, AJI {float(val['aji']):.2f}")
    f1 = val.get("det_f1", (metrics.get("prompter") or {}).get("val_det_f1"))
    iou = (metrics.get("segmentor") or {}).get("val_oracle_miou")
    if f1 is not None:
        parts.append(f"detection F1 {float(f1):.2f}")
    if val.get("mean_f_t") is not None:  # a typed model's type scores (evaluate's HoVer-Net F_t, PanNuke mPQ)
        parts.append(f"type F1 {float(val['mean_f_t']):.2f}" + (f", mPQ {float(val['mpq']):.2f}" if val.get("mpq") is not None else ""))
    if iou is not None:
        parts.append(f"mask IoU {float(iou):.2f} (given the right point)")
    return ("model accuracy", ", ".join(parts), "on held-out training-set images; see the model card") if parts else ("model accuracy", "—", None)


def _figures(entry: SlideEntry) -> tuple[list[Row], list[Row]]:
    """What the tissue holds first; then the run's engineering figures (a details box)."""
    r = entry.report
    pics = entry.pictures or {}
    dims = (r.get("slide_facts") or {}).get("dimensions")
    model = r.get("model") if isinstance(r.get("model"), dict) else {}
    rows: list[Row] = [
        ("slide file", str(r.get("slide", "—")), None),
        ("tissue", f"{_num(r.get('tissue_mm2'), 2)} mm²" if r.get("tissue_mm2") is not None else "—", None),
        ("nuclei", _num(r.get("nuclei")), f"({_num(r['small_masks_dropped'])} fragments below {_num(r.get('min_nucleus_um2'), 1)} µm² left out)" if r.get("small_masks_dropped") else None),
        ("nuclei per mm² of tissue", _num(r.get("nuclei_per_mm2_tissue")), None),
        ("median nucleus area", f"{_num(r.get('median_area_um2'), 1)} µm²" if r.get("median_area_um2") is not None else "—", None),
        ("µm per pixel", _num(r.get("mpp_used"), 4), f"from {r.get('mpp_source', '—')}"),
        ("model", _model_name(r), f"at {_num(r.get('model_mpp'), 3)} µm/px" if r.get("model_mpp") else None),
        _accuracy(r),
        ("weights licence", str(model.get("licence") or weights_licence(str(model.get("model")))), None),
    ]
    if (r.get("settings") or {}).get("roi"):
        rows.append(("region", "level-0 x, y, w, h = " + ", ".join(str(v) for v in r["settings"]["roi"]), None))
    if (pics.get("density") or {}).get("max_per_mm2") is not None:
        d = pics["density"]
        rows.append(("density", f"peak {_num(d['max_per_mm2'])} / mm², median {_num(d['median_nonempty_per_mm2'])} / mm²", f"(non-empty {_num(d['bin_um'])} µm bins)"))
    details: list[Row] = [
        ("level-0 size", f"{dims[0]:,} × {dims[1]:,} px" if isinstance(dims, list) and len(dims) == 2 else "—", None),
        ("tiles", _num(r.get("tiles")), f"of {_num(r.get('tiles_in_grid'))} in the grid; tissue {100 * float(r['tissue_fraction']):.0f}% of the slide" if r.get("tissue_fraction") is not None else None),
        ("wall time", _duration(r.get("wall_seconds")), "(resumed)" if r.get("resumed") else None),
        ("tiles / s", _num(r.get("tiles_per_second"), 2), None),
        ("nuclei / s", _num(r.get("nuclei_per_second"), 1), None),
        ("peak RAM", f"{_num(r.get('peak_rss_mb'))} MB" if r.get("peak_rss_mb") is not None else "—", None),
        ("stain vectors", str((r.get("stains") or {}).get("source", "—")), None),
    ]
    return rows, details


def _classes(entry: SlideEntry) -> list[dict[str, Any]]:
    counts = (entry.pictures or {}).get("class_counts")
    if counts is None:  # pictures missing: fall back to the report's own counts
        counts = [{"class": k, "count": int(v), "color": None} for k, v in (entry.report.get("class_counts") or {}).items()]
    total = sum(c["count"] for c in counts) or 1
    tissue = float(entry.report.get("tissue_mm2") or 0)  # per mm² as the run report's class_per_mm2_tissue
    return [
        {
            "name": str(c["class"]), "count": int(c["count"]), "color": c.get("color") if re.fullmatch(r"#[0-9a-fA-F]{6}", str(c.get("color"))) else None, "percent": f"{100 * c['count'] / total:.1f}",
            "per_mm2": f"{int(c['count']) / tissue:,.0f}" if tissue > 0 else "—",
        }
        for c in counts
    ]


def _percent(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.0f}%"


def _type_table(figures: dict[str, Any]) -> dict[str, Any]:
    """One table of a `class_summary` (the slide's or a region's): per class its nuclei, mean
    and median area, and the share of them with a nucleus of each class nearby."""
    classes = figures.get("classes") or {}
    near = figures.get("near_fraction") or {}
    rows = [
        {
            "name": str(name), "count": int(c.get("nuclei") or 0),
            "mean": _num(c.get("mean_area_um2"), 1), "median": _num(c.get("median_area_um2"), 1),
            "near": [_percent((near.get(name) or {}).get(other)) for other in classes],
        }
        for name, c in classes.items()
    ]
    headline = figures.get("headline") if isinstance(figures.get("headline"), dict) else None
    return {"columns": [str(n) for n in classes], "rows": rows, "headline": headline.get("text") if headline else None}


def _types(entry: SlideEntry) -> dict[str, Any] | None:
    """The typed run's class summary (report key `class_summary`): None for an untyped model."""
    summary = entry.report.get("class_summary")
    if not isinstance(summary, dict) or not summary.get("classes"):
        return None
    colors = {c["name"]: c["color"] for c in _classes(entry)}
    slide = _type_table(summary)
    regions = [
        {"label": str(r.get("label") or f"region {int(r.get('index', 0)) + 1}"), **_type_table(r)}
        for r in summary.get("regions") or [] if isinstance(r, dict)
    ]
    for table in (slide, *regions):
        for row in table["rows"]:
            row["color"] = colors.get(row["name"])
    return {"near_um": _num(summary.get("near_um"), 0), **slide, "regions": regions}


def _files(entry: SlideEntry, base: Path) -> list[tuple[str, str, str]]:
    """(href, name, kind) of each output the report names that is still there."""
    links = []
    for kind, named in (entry.report.get("outputs") or {}).items():
        p = entry.folder / Path(str(named)).name
        href = _href(p, base)
        if href:
            links.append((href, p.name, str(kind)))
    csv_name = ((entry.pictures or {}).get("files") or {}).get("class_counts")
    href = _href(entry.folder / Path(str(csv_name)).name, base) if csv_name else None
    if href:
        links.append((href, Path(str(csv_name)).name, "class counts"))
    return links


Figure = tuple[str, str, bool]  # src, caption, wide


def _pictures(entry: SlideEntry, base: Path) -> tuple[list[Figure], list[tuple[str, str]], list[Figure]]:
    """(src, caption, wide) of the overview pictures drawn; (src, caption) of the zoomed insets;
    (src, caption, wide) of the charts: shown in that order."""
    pics = entry.pictures or {}
    mode = (pics.get("overlay") or {}).get("mode")
    overlay_caption = "Slide thumbnail with every nucleus outlined in its class colour" if mode == "outlines" else "Slide thumbnail with every nucleus as a dot in its class colour; the box marks the zoomed crop"
    names = pics.get("files") or {}

    def found(wanted: tuple[Figure, ...]) -> list[Figure]:
        shown = [(_href(entry.folder / Path(str(names[k])).name, base), caption, wide) for k, caption, wide in wanted if names.get(k)]
        return [(src, caption, wide) for src, caption, wide in shown if src]

    overview = found((
        ("overlay", overlay_caption, True),
        ("zoom", "Densest region at a resolution where outlines are visible (scale bar in µm)", True),
    ))
    charts = found((("density", "Nuclei per mm² on 100 µm bins", False), ("areas", "Nuclear areas (µm²)", False)))
    insets = []
    for i, inset in enumerate(pics.get("insets") or [], start=1):
        name = names.get(f"inset_{i}")
        src = _href(entry.folder / Path(str(name)).name, base) if name else None
        if src and isinstance(inset, dict):
            x0, y0, w0, h0 = (float(v) for v in inset["box_level0"])
            colours = "in their class colours" if inset.get("colors") == "class colours" else "in green"
            insets.append((src, (
                f"Inset {i}, at the model's {float(inset['um_per_px']):.2f} µm/px: "
                f"level-0 x {x0:,.0f}–{x0 + w0:,.0f}, y {y0:,.0f}–{y0 + h0:,.0f}; {int(inset['nuclei']):,} nuclei outlined {colours}"
            )))
    return overview, insets, charts


def _section(entry: SlideEntry, base: Path) -> dict[str, Any]:
    """The values of one slide's section of the page."""
    view: dict[str, Any] = {"stem": entry.stem, "anchor": anchor(entry.stem), "state": entry.state, "problem": entry.problem or entry.state, "folder": str(entry.folder),
                            "badge": entry.state, "badge_class": entry.state}
    if entry.state != "finished":
        return view
    pics = entry.pictures or {}
    notes = [str(n) for n in pics.get("notes", [])]
    if entry.problem:
        notes.append(entry.problem)
    notes += ["Check this result: " + w for w in entry.report.get("warnings") or []]
    if entry.report.get("warnings"):  # not a green "finished" over a result to check
        view.update(badge="finished with warnings", badge_class="warned")
    figures, details = _figures(entry)
    classes = _classes(entry)
    geojson = (entry.report.get("outputs") or {}).get("geojson")
    view.update(
        notes=notes, figures=figures, details=details, classes=classes, class_total=sum(c["count"] for c in classes),
        geojson=Path(str(geojson)).name if geojson else None, files=_files(entry, base), types=_types(entry),
    )
    view["pictures"], view["insets"], view["charts"] = _pictures(entry, base)
    return view


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("run_report.html.j2")


def run_report_html(out_dir: Path, entries: list[SlideEntry]) -> str:
    """The page: a run summary, a link per slide, then one section per slide."""
    done = [e for e in entries if e.state == "finished"]
    nuclei = sum(int(e.report.get("nuclei") or 0) for e in done)
    wall = sum(float(e.report.get("wall_seconds") or 0) for e in done)
    states = {s: sum(e.state == s for e in entries) for s in ("finished", "failed", "unfinished")}
    counts = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    summary = f"{len(entries)} slide{'s' if len(entries) != 1 else ''}: {counts} · {nuclei:,} nuclei · {_duration(wall)} of segmentation · page made {time.strftime('%Y-%m-%d %H:%M')}"
    title = f"promptnucseg run: {out_dir.resolve().name}"
    return _template().render(title=title, folder=str(out_dir.resolve()), summary=summary, sections=[_section(e, out_dir) for e in entries])
