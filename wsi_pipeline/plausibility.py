"""What a model's nuclei should look like, and the warnings when a finished run's do not.

Why: a wrong `--mpp` does not fail, it quietly gives nuclei at the wrong scale (or none):
`--mpp 0.25` on a slide really at ~2 um/px completed with 0 nuclei in a region a quarter
tissue. The figures here say "this cannot be right" and name the likely cause.

Where the figures come from (the bundled model, trained on Kumar/MoNuSeg at 0.25 um/px;
measured on the 9,907 annotated nuclei of its 16 training images):
- annotated nucleus areas: 0.5th / 1st / 5th percentile 1.9 / 2.3 / 3.6 um^2, median 15.8;
  the smallest are nuclei cut by the image border. A whole nucleus is >= ~3 um (a pyknotic
  lymphocyte), i.e. >= ~7 um^2; `min_nucleus_um2` = 3 um^2 (48 px at 0.25 um/px) drops
  fragments (the sample slide had masks of 0.94 um^2) and keeps every plausible nucleus,
  including ones the tissue section cut;
- median nucleus area per image 5.8-52 um^2; nuclei per mm^2 of image 5,000-30,000.
The warning bands are those ranges widened ~x2-x10 (a whole slide holds stroma and fat,
sparser than MoNuSeg's tumour crops), so a warning means a scale error, not a biology.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .slides import COARSE_WARN_MPP, NUCLEUS_MPP


@dataclass(frozen=True)
class NucleusRanges:
    """Plausible figures for one model's output, in microns."""

    min_nucleus_um2: float = 3.0  # masks below are fragments: dropped and counted
    median_area_um2: tuple[float, float] = (5.0, 120.0)  # outside: nuclei at the wrong scale
    nuclei_per_mm2: tuple[float, float] = (300.0, 60000.0)  # of tissue; outside: wrong scale or no nuclei found
    basis: str = "Kumar/MoNuSeg training labels at 0.25 um/px (plausibility.py)"


# model name (the bundle's `model`) -> ranges; models not listed get the default (nuclei are
# nuclei: the ranges are about human H&E tissue, not one network)
RANGES: dict[str, NucleusRanges] = {"promptnucseg-light-kumar": NucleusRanges()}
DEFAULT_RANGES = NucleusRanges()


def ranges_for(model: Mapping[str, Any]) -> NucleusRanges:
    """The ranges for a model, by the name its `describe()` gives."""
    return RANGES.get(str(model.get("model", "")), DEFAULT_RANGES)


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
