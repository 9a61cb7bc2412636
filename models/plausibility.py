"""What a model's nuclei should look like: the plausible ranges a finished run is checked against.

Why here and not in the pipeline: the figures come from what a model is trained for (its
nuclei, its tissue, its scale), so they travel with the model's facts (`interface.ModelFacts`);
`wsi_pipeline/plausibility.py` only turns figures outside them into warnings.

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


@dataclass(frozen=True)
class NucleusRanges:
    """Plausible figures for one model's output, in microns."""

    min_nucleus_um2: float = 3.0  # masks below are fragments: dropped and counted
    median_area_um2: tuple[float, float] = (5.0, 120.0)  # outside: nuclei at the wrong scale
    nuclei_per_mm2: tuple[float, float] = (300.0, 60000.0)  # of tissue; outside: wrong scale or no nuclei found
    basis: str = "Kumar/MoNuSeg training labels at 0.25 um/px (plausibility.py)"


# What a model is trained for -> its ranges. Every model this package reads (ours, SAM with our
# prompter, the PromptNucSeg release) segments nuclei of human H&E tissue, and the ranges are
# about that tissue, not one network; a model trained for something else gets its own entry.
HUMAN_HE_NUCLEI = "human H&E nuclei"
RANGES: dict[str, NucleusRanges] = {HUMAN_HE_NUCLEI: NucleusRanges()}


def ranges_for(trained_for: str = HUMAN_HE_NUCLEI) -> NucleusRanges:
    """The plausible ranges for a model trained for `trained_for` (an entry of `RANGES`)."""
    return RANGES[trained_for]
