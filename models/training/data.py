"""Training/validation images from the config's dataset folders, held in memory."""
from __future__ import annotations

from ..config import DataConfig
from ..data.datasets import NucleusSample, open_dataset


def load_split(data: DataConfig) -> tuple[list[NucleusSample], list[NucleusSample]]:
    """Train = every image of `data.train` not named in `val_names`; val = those + all of `data.val`."""
    if not data.train:
        raise ValueError("config data.train lists no dataset folder. Fix: add one, or pass --data DIR")
    held_out = set(data.val_names)
    train: list[NucleusSample] = []
    val: list[NucleusSample] = []
    seen: set[str] = set()
    for root in data.train:
        ds = open_dataset(root)
        seen.update(ds.names)
        for i, name in enumerate(ds.names):
            (val if name in held_out else train).append(ds[i])
    if held_out - seen:
        raise ValueError(f"val_names not found in {data.train}: {sorted(held_out - seen)}")
    for root in data.val:
        ds = open_dataset(root)
        val.extend(ds[i] for i in range(len(ds)))
    if not train:
        raise ValueError(f"no training images left in {data.train} after holding out {sorted(held_out)}")
    return train, val
