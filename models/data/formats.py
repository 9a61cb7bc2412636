"""Pixel-level readers shared by the dataset formats: images to uint8 RGB, labels to int32.

Kept apart from the dataset classes so each on-disk format is a few lines of layout logic
on top of one set of conversions; what "RGB" means is decided in `models/pixels.py`, the
rule slide tiles follow too. Every
label read here ends in `label_maps.as_instance_map`, the check `evaluate` uses too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pixels import to_rgb_uint8
from .label_maps import as_instance_map

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB; TIFF through tifffile (handles 16-bit/planar), the rest through PIL."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}). Fix: re-export it as PNG/JPEG/TIFF") from err
    if arr.size == 0:
        raise ValueError(f"{path}: not an image (array shape {tuple(arr.shape)}). Fix: save it as RGB PNG/JPEG/TIFF")
    return to_rgb_uint8(arr, path)


# --- MoNuSeg: Aperio ImageScope XML polygons -------------------------------------------------

# Aperio vertices are rasterised as if 1-based pixel centres (MATLAB poly2mask on the raw
# numbers, which is how the released MoNuSeg/Kumar instance masks were made): shifting by
# this much reproduces them at foreground IoU ~0.98-0.995, against ~0.87-0.91 unshifted.
APERIO_VERTEX_ORIGIN = 1.0


def read_aperio_polygons(path: Path) -> list[np.ndarray]:
    """Every Region's vertices as an (N, 2) float array of (x, y), in file order."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise ValueError(f"{path}: cannot be parsed as Aperio XML ({err}). Fix: re-export the annotation") from err
    polygons = []
    for region in root.iter("Region"):
        try:
            xy = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: Region {region.get('Id')} has a vertex without numeric X/Y ({err}). Fix: re-export the annotation") from err
        polygons.append(np.asarray(xy, np.float64).reshape(-1, 2))
    return polygons


def aperio_mpp(path: Path) -> float | None:
    """`MicronsPerPixel` of the <Annotations> root, read without parsing the (MB-sized) rest."""
    import xml.etree.ElementTree as ET

    try:
        for _, elem in ET.iterparse(path, events=("start",)):
            value = elem.get("MicronsPerPixel")
            return float(value) if value and float(value) > 0 else None
    except (OSError, ET.ParseError, ValueError):
        return None
    return None


def rasterise_polygons(
    polygons: list[np.ndarray], shape: tuple[int, int], origin: float = APERIO_VERTEX_ORIGIN, first_wins: bool = True
) -> np.ndarray:
    """Instance map with polygon k (file order) as id k+1.

    Where polygons overlap, the earlier one keeps the pixels by default: that reproduces the
    released Kumar/MoNuSeg masks (PQ 0.993/0.982/0.978 on the three raw-format images, against
    0.940/0.980/0.954 with later regions on top). `first_wins=False` paints later regions on top.
    """
    from skimage.draw import polygon

    inst = np.zeros(shape, np.int32)
    order = list(enumerate(polygons, start=1))
    for k, xy in reversed(order) if first_wins else order:
        if len(xy) < 3:
            continue  # a point or a line encloses no pixel
        rr, cc = polygon(xy[:, 1] - origin, xy[:, 0] - origin, shape)
        inst[rr, cc] = k
    return inst


# --- CPM-17 / CoNSeP: MATLAB .mat labels ------------------------------------------------------

# CoNSeP's original 7 types and HoVer-Net's merge to 4: epithelial (3, 4) -> 3, spindle (5, 6, 7) -> 4.
CONSEP_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], np.int64)


def read_mat(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file (v4-v7.2) through scipy; a v7.3 (HDF5) file gets a clear error."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=names)
    except NotImplementedError as err:  # v7.3
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) file. Fix: re-save it with save(..., '-v7')") from err
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot be read as a .mat file ({err}). Fix: re-export the label") from err


def mat_instances(mat: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """`inst_map` from the .mat, else the instance map in `<stem>.npy` beside it (how the CoNSeP patches ship)."""
    if "inst_map" in mat:
        return as_instance_map(mat["inst_map"], path)
    npy = path.with_suffix(".npy")
    if npy.is_file():
        try:
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{npy}: cannot be read as an instance map ({err}). Fix: re-save it with numpy.save") from err
        return as_instance_map(arr, npy)
    raise ValueError(f"{path}: no 'inst_map' variable and no {npy.name} beside it. Fix: store the instance map as inst_map or as {npy.name}")


def mat_instance_types(mat: dict[str, np.ndarray], instances: np.ndarray, path: Path) -> dict[int, int] | None:
    """{instance id: type as in the file} from `inst_type` (row k = k-th smallest id, as
    HoVer-Net writes it) or, without it, the majority of `type_map` under each instance."""
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if "inst_type" in mat:
        types = np.asarray(mat["inst_type"]).reshape(-1)
        if types.size == ids.size:
            keys = ids
        elif ids.size and types.size >= ids.max():  # ids index the rows directly (some removed)
            keys, types = ids, types[ids - 1]
        else:
            raise ValueError(f"{path}: inst_type has {types.size} rows for {ids.size} instances. Fix: one row per instance id, in id order")
        if not np.all(np.isfinite(types)) or not np.array_equal(types, np.round(types)):
            raise ValueError(f"{path}: inst_type holds non-integer values. Fix: store integer types 1..K")
        return {int(i): int(t) for i, t in zip(keys, types)}
    if "type_map" in mat:
        tmap = as_instance_map(mat["type_map"], path)
        if tmap.shape != instances.shape:
            raise ValueError(f"{path}: type_map {tmap.shape} and inst_map {instances.shape} differ in shape. Fix: re-export the label")
        fg = instances > 0
        uniq, inverse = np.unique(instances[fg], return_inverse=True)
        votes = np.zeros((uniq.size, int(tmap.max()) + 1), np.int64)
        np.add.at(votes, (inverse, tmap[fg]), 1)
        votes[:, 0] = 0  # an untyped pixel never outvotes a type
        return {int(i): int(t) for i, t in zip(uniq, votes.argmax(axis=1))}
    return None


# --- CPM ASCII masks --------------------------------------------------------------------------


def read_cpm_ascii(path: Path) -> np.ndarray:
    """`width height` then width*height labels, row by row (the CPM-15/17 challenge masks)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.int64)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a CPM ASCII mask ({err}). Fix: 'width height' then one integer label per pixel") from err
    if values.size < 2 or values[0] <= 0 or values[1] <= 0:
        raise ValueError(f"{path}: header is not 'width height'. Fix: start the file with the mask's width and height")
    width, height = int(values[0]), int(values[1])
    if values.size - 2 != width * height:
        raise ValueError(f"{path}: header says {width}x{height} = {width * height} labels but {values.size - 2} follow. Fix: re-export the mask")
    return as_instance_map(values[2:].reshape(height, width), path)


# --- PanNuke ------------------------------------------------------------------------------------

PANNUKE_CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def merge_pannuke_mask(mask: np.ndarray, source: str) -> tuple[np.ndarray, dict[int, int]]:
    """(H, W, 6) PanNuke mask -> (instance map, {id: 0-based channel class}).

    Channels 0-4 hold instance ids per class, channel 5 is background. Ids are kept; a
    channel reusing another channel's id is shifted past the ids used so far, so no two
    nuclei share an id. A pixel claimed by two channels goes to the later one.
    """
    m = np.asarray(mask)
    if m.ndim != 3 or m.shape[2] < 5:
        raise ValueError(f"{source}: PanNuke mask has shape {m.shape}, expected (H, W, 6). Fix: use the fold's masks.npy")
    inst = np.zeros(m.shape[:2], np.int32)
    classes: dict[int, int] = {}
    for c in range(5):
        channel = as_instance_map(m[..., c], f"{source} channel {c}")
        ids = np.unique(channel)
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        if classes and any(int(i) in classes for i in ids):
            shift = max(classes)
            channel = np.where(channel > 0, channel + shift, 0)
            ids = ids + shift
        inst = np.where(channel > 0, channel, inst)
        classes.update({int(i): c for i in ids})
    present = set(np.unique(inst).tolist())
    return inst, {i: c for i, c in classes.items() if i in present}
