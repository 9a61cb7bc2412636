"""Training/validation images from the config's dataset folders, held in memory, each at the
config's microns per pixel (`data.mpp`) when it asks for one."""
from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..config import DataConfig
from ..data.datasets import NucleusSample, open_dataset


def read_image_mpp(paths: list[str]) -> dict[str, float]:
    """{image stem: um/px} from the YAML files `data.image_mpp` names."""
    table: dict[str, float] = {}
    for path in paths:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in values.values()):
            raise ValueError(f"{path}: expected 'stem: microns per pixel' lines with positive numbers")
        table.update({str(k): float(v) for k, v in values.items()})
    return table


def resample(sample: NucleusSample, from_mpp: float, to_mpp: float) -> NucleusSample:
    """The sample as scanned at `to_mpp`: image resized with area averaging (bilinear when
    enlarging), instance ids nearest so no id is blended; ids too small to survive vanish."""
    h, w = sample.instances.shape
    size = (max(1, round(w * from_mpp / to_mpp)), max(1, round(h * from_mpp / to_mpp)))
    smooth = Image.BOX if to_mpp > from_mpp else Image.BILINEAR
    image = np.asarray(Image.fromarray(sample.image).resize(size, smooth))
    instances = np.asarray(Image.fromarray(sample.instances.astype(np.int32)).resize(size, Image.NEAREST))
    return NucleusSample(sample.name, image, instances, sample.instance_classes)


def load_split(data: DataConfig) -> tuple[list[NucleusSample], list[NucleusSample]]:
    """Train = every image of `data.train` not named in `val_names`; val = those + all of `data.val`.

    A `val_names` entry may be a shell pattern (`train_8_*`): patches of one source image are
    near-duplicates, so a patch data set is held out by source image, never patch by patch."""
    if not data.train:
        raise ValueError("config data.train lists no dataset folder. Fix: add one, or pass --data DIR")
    patterns = list(data.val_names)
    per_image = read_image_mpp(data.image_mpp)
    train: list[NucleusSample] = []
    val: list[NucleusSample] = []
    matched: set[str] = set()

    def held_out(name: str) -> bool:
        hits = [p for p in patterns if fnmatchcase(name, p)]
        matched.update(hits)
        return bool(hits)

    def at_mpp(ds, i: int) -> NucleusSample:
        sample = ds[i]
        if data.mpp is None:
            return sample
        source = per_image.get(sample.name, ds.mpp)
        if source is None:
            raise ValueError(f"{ds.root}: {sample.name} has no known microns per pixel, so it cannot be brought to data.mpp {data.mpp}. Fix: add mpp to the data set's dataset.yaml, or list the image in a data.image_mpp file")
        return sample if abs(source - data.mpp) < 1e-6 else resample(sample, source, data.mpp)

    for root in data.train:
        ds = open_dataset(root)
        for i, name in enumerate(ds.names):
            (val if held_out(name) else train).append(at_mpp(ds, i))
    if set(patterns) - matched:
        raise ValueError(f"val_names not found in {data.train}: {sorted(set(patterns) - matched)}")
    for root in data.val:
        ds = open_dataset(root)
        val.extend(at_mpp(ds, i) for i in range(len(ds)))
    if not train:
        raise ValueError(f"no training images left in {data.train} after holding out {sorted(patterns)}")
    return train, val
