"""Dataset readers: every training/evaluation format as one lazy sequence of `NucleusSample`."""
from .datasets import FolderDataset, NucleusDataset, NucleusSample, instance_points, open_dataset

__all__ = ["FolderDataset", "NucleusDataset", "NucleusSample", "instance_points", "open_dataset"]
