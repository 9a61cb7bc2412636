"""Training/evaluation data sets as one lazy sequence of (image, instance map, classes) samples.

Every on-disk format (the uniform folder layout, PanNuke folds, MoNuSeg XML, CPM/CoNSeP
.mat, CPM ASCII masks) ends in the same `NucleusSample`, so training and evaluation never
look at file layouts. `open_dataset` picks the format from the folder's layout.

Over 450 lines on purpose: six formats of 20-60 lines each share the pairing, shape and
class-name rules above them; a module per format would scatter those rules.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .folders import files_by_stem
from ..pixels import to_rgb_uint8
from .formats import (
    CONSEP_MERGE,
    IMAGE_SUFFIXES,
    PANNUKE_CLASS_NAMES,
    aperio_mpp,
    mat_instance_types,
    mat_instances,
    merge_pannuke_mask,
    rasterise_polygons,
    read_aperio_polygons,
    read_cpm_ascii,
    read_mat,
    read_rgb,
)
from .label_maps import LABEL_SUFFIXES, read_label_map

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


class _PairedDataset(NucleusDataset):
    """One image file + one label file per sample, paired by stem; subclasses read the label."""

    _images: dict[str, Path]
    _labels: dict[str, Path]

    def _pair(self, image_dir: Path, images: dict[str, Path], labels: dict[str, Path], expected_label: str) -> None:
        """Keep the pairing, failing on the first image with no label (`expected_label` names the file wanted)."""
        if not images:
            raise ValueError(f"{image_dir}: holds no images ({'/'.join(IMAGE_SUFFIXES)}). Fix: put the images there, or point at the right folder")
        unlabelled = [s for s in images if s not in labels]
        if unlabelled:
            stem = unlabelled[0]
            raise FileNotFoundError(
                f"{expected_label.format(stem=stem)}: missing label for image {images[stem]} ({len(unlabelled)} of {len(images)} "
                f"images unlabelled). Fix: add the label or remove the image"
            )
        self._images, self._labels = images, labels

    def _read_label(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, int] | None]:
        raise NotImplementedError

    def _read(self, name: str) -> NucleusSample:
        image_path, label_path = self._images[name], self._labels[name]
        image = read_rgb(image_path)
        instances, classes = self._read_label(name, image.shape[:2])
        _check_shapes(image, instances, image_path, label_path)
        if classes is not None:
            classes = _keep_present(classes, instances)
        return NucleusSample(name, image, instances, classes)


class FolderDataset(_PairedDataset):
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
        self._pair(image_dir, files_by_stem(image_dir, IMAGE_SUFFIXES, "images"), files_by_stem(label_dir, LABEL_SUFFIXES, "label maps"), str(label_dir / "{stem}.tif"))
        self._class_files: dict[str, Path] | None = None
        if class_dir.is_dir():
            self._class_files = files_by_stem(class_dir, (".json",), "class files")
            missing = [s for s in self._images if s not in self._class_files]
            if missing:
                raise FileNotFoundError(f"{class_dir / (missing[0] + '.json')}: missing ({len(missing)} images have no classes file). Fix: add it (use {{}} for no nuclei) or remove classes/")
        meta = _read_dataset_yaml(root)
        names = _resolve_class_names(root, class_names, meta, self._class_files)
        if mpp is None:
            mpp = _yaml_mpp(root, meta) or _known_mpp(root)
        super().__init__(root, list(self._images), names, None if mpp is None else float(mpp))

    def _read_label(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, int] | None]:
        instances = read_label_map(self._labels[name])
        if self._class_files is None:
            return instances, None
        return instances, _read_class_json(self._class_files[name], len(self.class_names))


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


def _yaml_mpp(root: Path, meta: dict) -> float | None:
    value = meta.get("mpp")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{root / 'dataset.yaml'}: mpp is {value!r}, not a positive number. Fix: write e.g. mpp: 0.25 (microns per pixel)")
    return float(value)


def _dataset_words(root: Path) -> str:
    """Names of the folder and its parent ("consep-patches/train"), lower-cased: what says which
    data set this is, without matching a user's home folder that happens to be called "kumar"."""
    parts = root.resolve().parts[-2:]
    return "/".join(parts).lower()


def _known_mpp(root: Path) -> float | None:
    words = _dataset_words(root)
    return next((v for key, v in KNOWN_MPP.items() if key in words), None)


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
    if "consep" in _dataset_words(root):
        return CONSEP_CLASS_NAMES
    largest = 0
    for path in class_files.values():
        largest = max([largest, *_read_class_json(path, 10**9).values()])
    return tuple(f"class {k}" for k in range(1, largest + 2))


def _as_names(names: object, source: Path) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: class names must be a non-empty list of strings, got {names!r}. Fix: list one name per class, in class-number order")
    return tuple(names)


def _subdir(root: Path, *candidates: str) -> Path:
    """The first of `candidates` that is a subfolder of `root` (any letter case), else `root` itself."""
    subs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((subs[c.lower()] for c in candidates if c.lower() in subs), root)


class MonusegDataset(_PairedDataset):
    """MoNuSeg originals: <stem>.tif images + Aperio <stem>.xml polygons (flat, or in
    "Tissue Images/" + "Annotations/"), rasterised as the released masks were (see
    `rasterise_polygons`: earlier regions keep overlaps unless `first_wins=False`).
    mpp from the XML's MicronsPerPixel (MoNuSeg: 0.2468), else 0.25 (40x)."""

    def __init__(self, root: str | Path, mpp: float | None = None, first_wins: bool = True) -> None:
        root = Path(root)
        self._first_wins = first_wins
        _require_dir(root, "a MoNuSeg folder with .tif images and .xml annotations")
        image_dir, label_dir = _subdir(root, "Tissue Images", "images"), _subdir(root, "Annotations", "labels")
        labels = files_by_stem(label_dir, (".xml",), "annotations")
        self._pair(image_dir, files_by_stem(image_dir, IMAGE_SUFFIXES, "images"), labels, str(label_dir / "{stem}.xml"))
        if mpp is None:
            mpp = aperio_mpp(next(iter(self._labels.values()))) or 0.25
        super().__init__(root, list(self._images), ("nucleus",), float(mpp))

    def _read_label(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, None]:
        return rasterise_polygons(read_aperio_polygons(self._labels[name]), shape, first_wins=self._first_wins), None


class MatDataset(_PairedDataset):
    """CPM-17 and CoNSeP originals: Images/<stem>.png + Labels/<stem>.mat (or both flat in one folder).

    The instance map is the .mat's `inst_map`, else `<stem>.npy` beside it. `classified`
    reads per-instance types (`inst_type`, else the majority of `type_map`) with CoNSeP's
    names: files holding any type above 4 are CoNSeP's original 7 types and are merged to
    HoVer-Net's 4 (other, inflammatory, epithelial, spindle-shaped) unless 7 `class_names`
    are given. CPM-17 mixes 20x and 40x, so its mpp is unknown; CoNSeP's is 0.25.
    """

    def __init__(self, root: str | Path, classified: bool, class_names: Sequence[str] | None = None, mpp: float | None = None) -> None:
        root = Path(root)
        _require_dir(root, "a folder with Images/ and Labels/*.mat")
        image_dir, label_dir = _subdir(root, "Images", "images"), _subdir(root, "Labels", "labels")
        self._pair(image_dir, files_by_stem(image_dir, IMAGE_SUFFIXES, "images"), files_by_stem(label_dir, (".mat",), "label files"), str(label_dir / "{stem}.mat"))
        self._merge = False
        if not classified:
            if class_names is not None and len(class_names) > 1:
                raise ValueError(f"{root}: class_names given for the unclassified cpm17 format. Fix: use format='consep' or drop class_names")
            names = tuple(class_names) if class_names else ("nucleus",)
        else:
            largest = max((max(t.values(), default=0) for t in map(self._file_types, self._images)), default=0)
            if class_names is not None:
                names = _as_names(class_names, root)
                self._merge = largest > len(names) and len(names) == len(CONSEP_CLASS_NAMES)
            else:
                names, self._merge = CONSEP_CLASS_NAMES, largest > len(CONSEP_CLASS_NAMES)
            top = len(CONSEP_MERGE) - 1 if self._merge else len(names)
            if largest > top:
                raise ValueError(f"{label_dir}: instance types go up to {largest} but there are {len(names)} class names. Fix: give class_names for every type")
        if mpp is None:
            mpp = _known_mpp(root) if classified else None
        super().__init__(root, list(self._images), names, mpp)
        self._classified = classified

    def _file_types(self, name: str) -> dict[int, int]:
        """Types as stored, read without the (large) instance map when `inst_type` is there."""
        path = self._labels[name]
        mat = read_mat(path, ("inst_type",))
        if "inst_type" in mat:
            types = np.asarray(mat["inst_type"]).reshape(-1)
            return {k + 1: int(t) for k, t in enumerate(types)}
        mat = read_mat(path)
        types = mat_instance_types(mat, mat_instances(mat, path), path)
        if types is None:
            raise ValueError(f"{path}: no inst_type or type_map, so no classes. Fix: use format='cpm17' for unclassified .mat labels")
        return types

    def _read_label(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, int] | None]:
        path = self._labels[name]
        mat = read_mat(path)
        instances = mat_instances(mat, path)
        if not self._classified:
            return instances, None
        types = mat_instance_types(mat, instances, path)
        if types is None:
            raise ValueError(f"{path}: no inst_type or type_map, so no classes. Fix: use format='cpm17' for unclassified .mat labels")
        top = len(CONSEP_MERGE) - 1 if self._merge else len(self.class_names)
        bad = [t for t in types.values() if not 1 <= t <= top]
        if bad:
            raise ValueError(f"{path}: instance type {bad[0]} outside 1..{top}. Fix: use 1-based types (0 is not a type), or give class_names for every type")
        if self._merge:
            types = {i: int(CONSEP_MERGE[t]) for i, t in types.items()}
        return instances, {i: t - 1 for i, t in types.items()}


class CpmAsciiDataset(_PairedDataset):
    """CPM challenge ASCII masks: <stem>.png + <stem>_mask.txt (flat, or in Images/ + Labels/)."""

    def __init__(self, root: str | Path, mpp: float | None = None) -> None:
        root = Path(root)
        _require_dir(root, "a folder with <stem>.png images and <stem>_mask.txt masks")
        image_dir, label_dir = _subdir(root, "Images", "images"), _subdir(root, "Labels", "labels", "masks")
        labels = {p.name[: -len("_mask.txt")]: p for p in sorted(label_dir.glob("*_mask.txt"))}
        self._pair(image_dir, files_by_stem(image_dir, IMAGE_SUFFIXES, "images"), labels, str(label_dir / "{stem}_mask.txt"))
        super().__init__(root, list(self._images), ("nucleus",), mpp)

    def _read_label(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, None]:
        return read_cpm_ascii(self._labels[name]), None


class PanNukeDataset(NucleusDataset):
    """A PanNuke fold: images.npy (N, H, W, 3), masks.npy (N, H, W, 6), optional types.npy,
    in the folder or anywhere below it (the release nests them as images/fold1/images.npy).

    Arrays are memory-mapped, so opening a 2,600-image fold reads nothing. Names are the
    row numbers ("00000", ...); `tissues` maps a name to its tissue type when types.npy
    exists. PanNuke is 40x, so mpp defaults to 0.25.
    """

    def __init__(self, root: str | Path, mpp: float | None = None) -> None:
        root = Path(root)
        _require_dir(root, "a PanNuke fold folder holding images.npy and masks.npy")
        images_path, masks_path = _find_one(root, "images.npy"), _find_one(root, "masks.npy")
        if images_path is None or masks_path is None:
            raise FileNotFoundError(f"{root}: no {'images.npy' if images_path is None else 'masks.npy'} in it or below it. Fix: point at a PanNuke fold folder")
        self._images_arr = _load_npy(images_path)
        self._masks_arr = _load_npy(masks_path)
        n = self._images_arr.shape[0]
        if self._images_arr.ndim != 4 or self._masks_arr.ndim != 4 or self._masks_arr.shape[3] != 6:
            raise ValueError(f"{root}: images {self._images_arr.shape} / masks {self._masks_arr.shape} are not (N, H, W, 3) / (N, H, W, 6). Fix: use the fold's own images.npy and masks.npy")
        if self._masks_arr.shape[:3] != self._images_arr.shape[:3]:
            raise ValueError(f"{masks_path}: masks {self._masks_arr.shape[:3]} do not match images {self._images_arr.shape[:3]}. Fix: use the masks.npy of the same fold")
        if n == 0:
            raise ValueError(f"{images_path}: holds no images. Fix: point at a non-empty fold")
        self._paths = (images_path, masks_path)
        names = [f"{i:05d}" for i in range(n)]
        types_path = _find_one(root, "types.npy")
        self.tissues: dict[str, str] | None = None
        if types_path is not None:
            types = _load_npy(types_path)
            if types.shape != (n,):
                raise ValueError(f"{types_path}: {types.shape} tissue types for {n} images. Fix: use the types.npy of the same fold")
            self.tissues = dict(zip(names, (str(t) for t in types)))
        super().__init__(root, names, PANNUKE_CLASS_NAMES, 0.25 if mpp is None else float(mpp))

    def _read(self, name: str) -> NucleusSample:
        i = int(name)
        image = to_rgb_uint8(np.asarray(self._images_arr[i]), f"{self._paths[0]}[{i}]", float_max=255.0)  # PanNuke stores 0..255 floats
        instances, classes = merge_pannuke_mask(np.asarray(self._masks_arr[i]), f"{self._paths[1]}[{i}]")
        return NucleusSample(name, image, instances, classes)


def _find_one(root: Path, filename: str, max_depth: int = 3) -> Path | None:
    """`filename` in root or up to `max_depth` folders below; two of them is an error (which fold?).

    The walk stops at `max_depth`, so pointing at a big folder by mistake stays quick.
    """
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        found += [d / filename for d in level if (d / filename).is_file()]
        level = [p for d in level for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if len(found) > 1:
        raise ValueError(f"{root}: {len(found)} files named {filename} ({found[0]}, {found[1]}). Fix: point at one fold's folder")
    return found[0] if found else None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as a numpy array ({err}). Fix: re-save it with numpy.save") from err


FORMATS = ("folder", "pannuke", "monuseg", "cpm17", "consep", "cpm-ascii")


def detect_format(root: Path) -> str:
    """Guess the format from the files each one must have (see FORMATS)."""
    _require_dir(root, "a dataset folder")
    if _find_one(root, "masks.npy") is not None and _find_one(root, "images.npy") is not None:
        return "pannuke"
    label_dir = _subdir(root, "labels", "Annotations", "masks")
    label_files = [p for p in label_dir.iterdir() if p.is_file()]
    suffixes = {p.suffix.lower() for p in label_files}
    if ".mat" in suffixes:
        first = next(p for p in sorted(label_files) if p.suffix.lower() == ".mat")
        variables = {name for name, _, _ in _whos_mat(first)}
        return "consep" if variables & {"inst_type", "type_map"} else "cpm17"
    if ".xml" in suffixes:
        return "monuseg"
    if any(p.name.endswith("_mask.txt") for p in label_files):
        return "cpm-ascii"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folder"
    raise ValueError(
        f"{root}: cannot tell the dataset format from its layout (no images/ + labels/, .mat, .xml, *_mask.txt "
        f"or images.npy + masks.npy). Fix: point at the dataset folder itself, or pass format= one of {FORMATS}"
    )


def _whos_mat(path: Path) -> list[tuple[str, tuple, str]]:
    import scipy.io

    try:
        return scipy.io.whosmat(path)
    except (OSError, ValueError, NotImplementedError, TypeError) as err:
        raise ValueError(f"{path}: cannot be read as a .mat file ({err}). Fix: re-save it with save(..., '-v7')") from err


def open_dataset(path: str | Path, format: str = "auto", mpp: float | None = None, *, class_names: Sequence[str] | None = None) -> NucleusDataset:
    """Open a dataset folder in any of FORMATS ("auto" detects it from the layout).

    `mpp` overrides the microns per pixel; `class_names` (keyword) names the 1-based
    classes in the files, overriding any default (folder and consep formats).
    """
    root = Path(path)
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r} for {root}. Fix: use 'auto' or one of {', '.join(FORMATS)}")
    if class_names is not None and fmt in ("pannuke", "monuseg", "cpm-ascii"):
        raise ValueError(f"{root}: class_names cannot be set for the {fmt} format (its classes are fixed). Fix: drop class_names")
    if fmt == "folder":
        return FolderDataset(root, class_names=class_names, mpp=mpp)
    if fmt == "pannuke":
        return PanNukeDataset(root, mpp=mpp)
    if fmt == "monuseg":
        return MonusegDataset(root, mpp=mpp)
    if fmt in ("cpm17", "consep"):
        return MatDataset(root, classified=fmt == "consep", class_names=class_names, mpp=mpp)
    return CpmAsciiDataset(root, mpp=mpp)
