"""Instance label maps: the one check every label passes, and the reader for label-map files.

Whatever a label comes from (a .npy/.png/.tif file, a .mat variable, a CPM ASCII mask, a
PanNuke channel), it ends in `as_instance_map`, so a bad label fails here with its source
and a fix, not later inside training or a metric. Training data and `evaluate` share it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from promptnucseg.errors import FixableError

LABEL_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


class LabelMapError(FixableError, ValueError):
    """A label map that cannot be used; the message names its source and the fix."""


def as_instance_map(arr: np.ndarray, source: str | Path) -> np.ndarray:
    """An (H, W) int32 instance map (0 background, one positive id per nucleus), checked.

    Singleton axes (a (1, H, W) TIFF page stack, an (H, W, 1) PNG) are squeezed away;
    boolean masks and integer-valued float arrays are accepted (some tools save labels
    as float). `source` names the file (or file and channel) in the error.
    """
    a = np.asarray(arr)
    while a.ndim > 2 and 1 in a.shape:  # drop singleton axes, but keep a 1-pixel-high map 2-D
        a = np.squeeze(a, axis=a.shape.index(1))
    if a.size == 0:
        raise LabelMapError(source, "holds no pixels (empty or damaged file)", "re-export the label map")
    if a.ndim != 2:
        raise LabelMapError(source, f"is not a 2-D label map (shape {tuple(a.shape)})", "save one integer instance id per pixel, not RGB or a stack")
    if a.dtype == bool:
        return a.astype(np.int32)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise LabelMapError(source, f"holds non-integer values (dtype {a.dtype})", "save instance ids as integers")
    elif not np.issubdtype(a.dtype, np.integer):
        raise LabelMapError(source, f"has unsupported dtype {a.dtype}", "save instance ids as uint16 or int32")
    if a.min() < 0:
        raise LabelMapError(source, f"holds negative labels (min {a.min()})", "use 0 for background and positive ids for nuclei")
    if a.max() > np.iinfo(np.int32).max:
        raise LabelMapError(source, f"holds labels above the int32 range (max {a.max()})", "renumber the instances 1..N")
    return a.astype(np.int32)


def _read_raw(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    raise LabelMapError(path, f"unsupported label-map format '{path.suffix}'", f"save it as one of {', '.join(LABEL_SUFFIXES)}")


def read_label_map(path: str | Path) -> np.ndarray:
    """The (H, W) int32 instance map in a .npy, (16-bit) .png or .tif/.tiff file (see `as_instance_map`)."""
    p = Path(path)
    if not p.is_file():
        raise LabelMapError(p, "no such file", "check the path")
    try:
        arr = _read_raw(p)
    except LabelMapError:
        raise
    except Exception as err:  # corrupt or truncated file: say which one
        raise LabelMapError(p, f"cannot be read ({type(err).__name__}: {err})", "re-export the label map") from err
    return as_instance_map(arr, p)
