"""Dataset readers: every training/evaluation format as one lazy sequence of `NucleusSample`."""
from .datasets import (
    CONSEP_CLASS_NAMES,
    FORMATS,
    CpmAsciiDataset,
    FolderDataset,
    MatDataset,
    MonusegDataset,
    NucleusDataset,
    NucleusSample,
    PanNukeDataset,
    detect_format,
    instance_points,
    open_dataset,
)

__all__ = [
    "CONSEP_CLASS_NAMES",
    "FORMATS",
    "CpmAsciiDataset",
    "FolderDataset",
    "MatDataset",
    "MonusegDataset",
    "NucleusDataset",
    "NucleusSample",
    "PanNukeDataset",
    "detect_format",
    "instance_points",
    "open_dataset",
]
