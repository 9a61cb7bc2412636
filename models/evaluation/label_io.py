"""Instance label maps from the files people actually have: .npy, 16-bit .png, .tif/.tiff.

Every reader ends in the same check (one 2-D array of non-negative integer labels), so a
bad file fails here with its name and a fix, not later inside a metric.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LABEL_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


class LabelMapError(ValueError):
    """A label-map file that cannot be scored; the message names the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}. Fix: {fix}")


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
    """An (H, W) int32 instance map: 0 background, one positive id per nucleus.

    Singleton axes (a (1, H, W) TIFF page stack, an (H, W, 1) PNG) are squeezed away;
    integer-valued float arrays are accepted (some tools save labels as float).
    """
    p = Path(path)
    if not p.is_file():
        raise LabelMapError(p, "no such file", "check the path")
    try:
        arr = _read_raw(p)
    except LabelMapError:
        raise
    except Exception as err:  # corrupt or truncated file: say which one
        raise LabelMapError(p, f"cannot be read ({type(err).__name__}: {err})", "re-export the label map") from err
    while arr.ndim > 2 and 1 in arr.shape:  # drop singleton axes, but keep a 1-pixel-high map 2-D
        arr = np.squeeze(arr, axis=arr.shape.index(1))
    if arr.size == 0:
        raise LabelMapError(p, "holds no pixels (empty or damaged file)", "re-export the label map")
    if arr.ndim != 2:
        raise LabelMapError(p, f"is not a 2-D label map (shape {tuple(arr.shape)})", "save one integer instance id per pixel, not RGB or a stack")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise LabelMapError(p, f"holds non-integer values (dtype {arr.dtype})", "save instance ids as integers")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise LabelMapError(p, f"has unsupported dtype {arr.dtype}", "save instance ids as uint16 or int32")
    if arr.size and arr.min() < 0:
        raise LabelMapError(p, f"holds negative labels (min {arr.min()})", "use 0 for background and positive ids for nuclei")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise LabelMapError(p, f"holds labels above the int32 range (max {arr.max()})", "renumber the instances 1..N")
    return arr.astype(np.int32)
