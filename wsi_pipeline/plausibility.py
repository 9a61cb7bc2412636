"""The warnings when a finished run's nuclei do not look like the model's (`ModelFacts.ranges`).

Why: a wrong `--mpp` does not fail, it quietly gives nuclei at the wrong scale (or none):
`--mpp 0.25` on a slide really at ~2 um/px completed with 0 nuclei in a region a quarter
tissue. The ranges say "this cannot be right" and are the model's (`models/plausibility.py`,
where their figures come from); this module names the likely cause.
"""
from __future__ import annotations

from promptnucseg.models.interface import NucleusRanges
from .slides import COARSE_WARN_MPP, NUCLEUS_MPP


def result_warnings(nuclei: int, tissue_mm2: float, median_area_um2: float | None, mpp: float, mpp_source: str, ranges: NucleusRanges) -> list[str]:
    """One sentence per figure far outside the model's range, naming the likely cause: a slide too
    coarse for nuclei (the plan warned already), else a wrong scale (--mpp)."""
    out: list[str] = []
    if mpp > COARSE_WARN_MPP:
        cause = f"the slide is too coarse for nuclei ({mpp:g} um/px, {mpp_source}; they need about {NUCLEUS_MPP:g} um/px or finer)"
    else:
        cause = f"the slide's scale is probably wrong: {mpp:g} um/px ({mpp_source}); check --mpp (see `promptnucseg segment --help`)"
    if tissue_mm2 >= 0.01:  # 100 x 100 um: smaller regions are too small to judge a density
        density = nuclei / tissue_mm2
        lo, hi = ranges.nuclei_per_mm2
        if not lo <= density <= hi:
            out.append(f"{density:,.0f} nuclei per mm^2 of tissue ({nuclei} in {tissue_mm2:.2f} mm^2), outside the plausible {lo:,.0f}-{hi:,.0f}; {cause}")
    if median_area_um2 is not None and nuclei >= 50:
        lo, hi = ranges.median_area_um2
        if not lo <= median_area_um2 <= hi:
            out.append(f"median nucleus area {median_area_um2:.1f} um^2, outside the plausible {lo:g}-{hi:g} um^2; {cause}")
    return out
