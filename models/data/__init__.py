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
from .label_maps import LABEL_SUFFIXES, LabelMapError, as_instance_map, read_label_map

__all__ = [
    "CONSEP_CLASS_NAMES",
    "FORMATS",
    "LABEL_SUFFIXES",
    "CpmAsciiDataset",
    "FolderDataset",
    "LabelMapError",
    "MatDataset",
    "MonusegDataset",
    "NucleusDataset",
    "NucleusSample",
    "PanNukeDataset",
    "as_instance_map",
    "detect_format",
    "instance_points",
    "open_dataset",
    "read_label_map",
]
