"""Training/evaluation data sets as one lazy sequence of (image, instance map, classes) samples.

Every on-disk format (the uniform folder layout, PanNuke folds, MoNuSeg XML, CPM/CoNSeP
.mat, CPM ASCII masks) ends in the same `NucleusSample`, so training and evaluation never
look at file layouts. `open_dataset` picks the format from the folder's layout.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.label_io import LABEL_SUFFIXES, read_label_map
from .formats import IMAGE_SUFFIXES, read_rgb

# HoVer-Net's merged CoNSeP classes, 1-based in the files: 1 other, 2 inflammatory, 3 epithelial, 4 spindle.
CONSEP_CLASS_NAMES = ("other", "inflammatory", "epithelial", "spindle-shaped")
# Data sets scanned at 40x whose microns-per-pixel is known; matched against the folder path.
KNOWN_MPP = {"kumar": 0.25, "monuseg": 0.25, "consep": 0.25}


@dataclass
class NucleusSample:
    name: str  # file stem
    image: np.ndarray  # uint8 (H, W, 3) RGB
    instances: np.ndarray  # int32 (H, W), 0 = background, ids need not be consecutive
    instance_classes: dict[int, int] | None  # instance id -> 0-based index into class_names; None if unclassified


class NucleusDataset(Sequence[NucleusSample]):
    """A lazy list of samples: `ds[i]` reads sample i from disk; `subset` carves splits by name."""

    def __init__(self, root: Path, names: list[str], class_names: tuple[str, ...] = ("nucleus",), mpp: float | None = None) -> None:
        self.root = root
        self.names = list(names)
        self.class_names = tuple(class_names)
        self.mpp = mpp

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.subset(self.names[index])
        name = self.names[index]  # IndexError ends iteration, as Sequence expects
        return self._read(name)

    def subset(self, names: Sequence[str]) -> "NucleusDataset":
        """The same data set restricted to `names` (in that order), e.g. a validation split."""
        if isinstance(names, str):
            raise TypeError("subset() takes a list of names, not one string")
        known = set(self.names)
        missing = [n for n in names if n not in known]
        if missing:
            raise KeyError(f"{self.root}: no sample named {missing[:5]}{' ...' if len(missing) > 5 else ''}. Fix: use names from dataset.names")
        out = copy.copy(self)
        out.names = list(names)
        return out

    def _read(self, name: str) -> NucleusSample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.root} n={len(self)} classes={self.class_names} mpp={self.mpp}>"


def instance_points(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (N,), centroids float32 (N, 2) as (x, y)) of every instance, ids ascending.

    Centroids are in pixel-index coordinates (the centre of pixel (row r, col c) is (c, r)),
    the point labels the prompter trains on.
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D, got shape {inst.shape}")
    ys, xs = np.nonzero(inst)
    if ys.size == 0:
        return np.zeros(0, np.int32), np.zeros((0, 2), np.float32)
    ids, inverse, counts = np.unique(inst[ys, xs], return_inverse=True, return_counts=True)
    cx = np.bincount(inverse, weights=xs) / counts
    cy = np.bincount(inverse, weights=ys) / counts
    return ids.astype(np.int32), np.stack([cx, cy], axis=1).astype(np.float32)


def _check_shapes(image: np.ndarray, instances: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:2] != instances.shape:
        raise ValueError(
            f"{label_path}: label map is {instances.shape[1]}x{instances.shape[0]} (WxH) but its image {image_path.name} "
            f"is {image.shape[1]}x{image.shape[0]}. Fix: re-export the label at the image's size (or pair it with the right image)"
        )


def _keep_present(classes: dict[int, int], instances: np.ndarray) -> dict[int, int]:
    """Drop class entries for ids absent from the map (e.g. cropped away), so keys == ids on the map."""
    present = set(np.unique(instances).tolist())
    return {i: c for i, c in classes.items() if i in present}


def _index_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """stem -> path for files with one of `suffixes`; two files with one stem is an error (which one is meant?)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in found:
                raise ValueError(f"{folder}: both {found[p.stem].name} and {p.name} have stem '{p.stem}'. Fix: keep one of them")
            found[p.stem] = p
    return found


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder. Fix: give the path of {what}")
    if not path.is_dir():
        raise ValueError(f"{path}: is a file, not a folder. Fix: give the folder holding {what}")


def _read_class_json(path: Path, n_classes: int) -> dict[int, int]:
    """{"instance id": 1-based class} -> {id: 0-based class}, with the bad entry named on error."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as JSON ({err}). Fix: write {{\"instance id\": class}}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object {{\"instance id\": class}}, got {type(raw).__name__}. Fix: rewrite it in that form")
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            inst = int(key)
        except ValueError:
            raise ValueError(f"{path}: key {key!r} is not an instance id. Fix: use the integer ids of labels/<stem>.tif") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n_classes:
            raise ValueError(f"{path}: instance {key} has class {value!r}, expected 1..{n_classes}. Fix: use 1-based class numbers or give class_names")
        out[inst] = value - 1
    return out


class FolderDataset(NucleusDataset):
    """The uniform layout: images/<stem>.png|jpg|tif, labels/<stem>.tif, optional classes/<stem>.json.

    Class names, first found wins: the `class_names` argument; `classes.json` at the root
    (a list, or {"1": name, ...}); `class_names` in `dataset.yaml`; CoNSeP's merged classes
    when "consep" is in the path; else "class 1".."class K" from the largest class seen.
    mpp: the argument; `mpp` in `dataset.yaml`; 0.25 for Kumar/MoNuSeg/CoNSeP paths; else None.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None, mpp: float | None = None) -> None:
        root = Path(root)
        _require_dir(root, "a dataset folder with images/ and labels/")
        image_dir, label_dir, class_dir = root / "images", root / "labels", root / "classes"
        for sub in (image_dir, label_dir):
            if not sub.is_dir():
                raise FileNotFoundError(f"{root}: no {sub.name}/ folder. Fix: put images in images/<stem>.png and instance maps in labels/<stem>.tif")
        self._images = _index_files(image_dir, IMAGE_SUFFIXES)
        if not self._images:
            raise ValueError(f"{image_dir}: holds no images ({'/'.join(IMAGE_SUFFIXES)}). Fix: put the images there")
        self._labels = _index_files(label_dir, LABEL_SUFFIXES)
        unlabelled = [s for s in self._images if s not in self._labels]
        if unlabelled:
            raise FileNotFoundError(
                f"{label_dir / (unlabelled[0] + '.tif')}: missing label for image {self._images[unlabelled[0]].name}"
                f" ({len(unlabelled)} unlabelled). Fix: add labels/<stem>.tif or remove the image"
            )
        self._class_files: dict[str, Path] | None = None
        if class_dir.is_dir():
            self._class_files = _index_files(class_dir, (".json",))
            missing = [s for s in self._images if s not in self._class_files]
            if missing:
                raise FileNotFoundError(f"{class_dir / (missing[0] + '.json')}: missing ({len(missing)} images have no classes file). Fix: add it (use {{}} for no nuclei) or remove classes/")
        meta = _read_dataset_yaml(root)
        names = _resolve_class_names(root, class_names, meta, self._class_files)
        if mpp is None:
            mpp = meta.get("mpp") if meta.get("mpp") is not None else _known_mpp(root)
        super().__init__(root, list(self._images), names, None if mpp is None else float(mpp))

    def _read(self, name: str) -> NucleusSample:
        image_path, label_path = self._images[name], self._labels[name]
        image = read_rgb(image_path)
        instances = read_label_map(label_path)
        _check_shapes(image, instances, image_path, label_path)
        classes = None
        if self._class_files is not None:
            classes = _keep_present(_read_class_json(self._class_files[name], len(self.class_names)), instances)
        return NucleusSample(name, image, instances, classes)


def _read_dataset_yaml(root: Path) -> dict:
    path = root / "dataset.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot be read as YAML ({err}). Fix: correct or remove it") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a mapping (class_names: [...], mpp: 0.25). Fix: rewrite it in that form")
    return meta


def _known_mpp(root: Path) -> float | None:
    text = str(root.resolve()).lower()
    return next((v for key, v in KNOWN_MPP.items() if key in text), None)


def _resolve_class_names(root: Path, given: Sequence[str] | None, meta: dict, class_files: dict[str, Path] | None) -> tuple[str, ...]:
    if class_files is None:
        if given is not None and len(given) > 1:
            raise ValueError(f"{root}: class_names given but there is no classes/ folder. Fix: add classes/<stem>.json or drop class_names")
        return tuple(given) if given else ("nucleus",)
    if given is not None:
        return _as_names(given, root)
    json_path = root / "classes.json"
    if json_path.is_file():
        try:
            raw = json.loads(json_path.read_text())
        except ValueError as err:
            raise ValueError(f"{json_path}: cannot be read as JSON ({err}). Fix: write a list of class names") from err
        if isinstance(raw, dict):
            try:
                order = sorted(raw, key=int)
            except ValueError:
                raise ValueError(f"{json_path}: keys must be class numbers 1..K. Fix: write {{\"1\": \"name\", ...}} or a list") from None
            if [int(k) for k in order] != list(range(1, len(order) + 1)):
                raise ValueError(f"{json_path}: class numbers must be 1..{len(order)} without gaps. Fix: renumber them")
            raw = [raw[k] for k in order]
        return _as_names(raw, json_path)
    if "class_names" in meta:
        return _as_names(meta["class_names"], root / "dataset.yaml")
    if "consep" in str(root.resolve()).lower():
        return CONSEP_CLASS_NAMES
    largest = 0
    for path in class_files.values():
        largest = max([largest, *_read_class_json(path, 10**9).values()])
    return tuple(f"class {k}" for k in range(1, largest + 2))


def _as_names(names: object, source: Path) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: class names must be a non-empty list of strings, got {names!r}. Fix: list one name per class, in class-number order")
    return tuple(names)


FORMATS = ("folder",)


def detect_format(root: Path) -> str:
    """Guess the format from the folder layout (the files each format must have)."""
    _require_dir(root, "a dataset folder")
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folder"
    raise ValueError(f"{root}: cannot tell the dataset format from its layout. Fix: use the images/ + labels/ layout or pass format= one of {FORMATS}")


def open_dataset(path: str | Path, format: str = "auto", mpp: float | None = None, *, class_names: Sequence[str] | None = None) -> NucleusDataset:
    """Open a dataset folder in any supported `format` ("auto" detects it from the layout).

    `mpp` overrides the microns per pixel; `class_names` (keyword) overrides the names of
    the 1-based classes in the files.
    """
    root = Path(path)
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "folder":
        return FolderDataset(root, class_names=class_names, mpp=mpp)
    raise ValueError(f"unknown dataset format {format!r}. Fix: use 'auto' or one of {FORMATS}")
