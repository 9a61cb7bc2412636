"""Pictures and one HTML page for a finished `promptnucseg segment` run: the morning-after check.

Four parts, one concern each:

- `run_reader`: reading a finished run (the nuclei store a chunk at a time, class names and
  colours, each slide folder's report and state);
- `drawing`: outlines, dots, legend, scale bar, density grid, the two charts;
- `slide`: one slide's pictures and `<stem>_pictures.json` (`render_slide_report`);
- `index`: the run's `report.html` from a Jinja2 template (`render_run_report`).
"""
from __future__ import annotations

from .drawing import DensityGrid, draw_scale_bar, nucleus_density
from .index import render_run_report, run_report_html, weights_licence
from .run_reader import NucleusColumns, SlideEntry, find_slides
from .slide import render_slide_report

__all__ = [
    "DensityGrid", "NucleusColumns", "SlideEntry", "draw_scale_bar", "find_slides", "nucleus_density",
    "render_run_report", "render_slide_report", "run_report_html", "weights_licence",
]
