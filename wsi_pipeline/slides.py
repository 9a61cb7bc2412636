"""One reader interface for slides and images, with microns per pixel made explicit.

Why: the networks were trained at a fixed resolution (~0.25-0.5 um/px), so every tile must
be read at a known microns-per-pixel value; a missing or wrong value silently ruins a night's
run (CellViT#76, tiatoolbox#508/#534, instanseg#38, hover_net#270). Readers therefore report
where their mpp came from, refuse absurd values, and always hand out uint8 RGB.

Backends (OpenSlide, tifffile + zarr, Pillow, optional TIAToolbox) live in
`slide_backends.py`, the interface they implement in `slide_reader.py`; `open_slide` here
picks one. Coordinates are level-0 pixels, x right, y down.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .errors import PipelineInputError
from .slide_backends import BACKEND_CLASSES
from .slide_reader import CORRUPT_FIX, LEVEL_TOLERANCE, MPP_FIX, SlideReader, _missing_mpp_error, mpp_from_resolution, mpp_hint, opened

__all__ = [  # the reader interface, re-exported: callers open and type slides through this module
    "BACKENDS", "COARSE_MAX_MPP", "COARSE_WARN_MPP", "CORRUPT_FIX", "LEVEL_TOLERANCE", "MPP_FIX", "MPP_MAX", "MPP_MIN",
    "NUCLEUS_MPP", "SUPPORTED_EXTENSIONS", "SlideReader", "coarse_warning", "implausible_mpp", "too_coarse", "mpp_from_resolution", "mpp_hint", "open_slide", "parse_roi", "resolve_mpp",
]

MPP_MIN = 0.05  # um/px; finer than any light microscope can resolve
MPP_MAX = 10.0  # um/px; coarser than any slide a nucleus model can use
# Nuclei are 5-20 um across: at 0.5 um/px (a 20x scan) they are 10-40 px, the coarsest scale at which a
# nucleus model sees them well. Coarser slides are warned about, and refused (unless --force-mpp) past the
# point where a nucleus is a few pixels: a thumbnail or 5x export, not a slide to segment (docs/whole-slide.md, "Slide resolution").
NUCLEUS_MPP = 0.5
COARSE_WARN_MPP = 0.6  # a 20x scanner reports 0.49-0.52 um/px: no warning for those
COARSE_MAX_MPP = 2.0  # 2.5-10 px per nucleus; coarser is refused

OPENSLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff")
TIFF_EXTENSIONS = (".tif", ".tiff", ".btf")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SUPPORTED_EXTENSIONS = tuple(sorted(set(OPENSLIDE_EXTENSIONS + TIFF_EXTENSIONS + IMAGE_EXTENSIONS)))
# Extensions whose files must start with a TIFF header (.mrxs and .vms are text index files).
TIFF_BASED_EXTENSIONS = (".svs", ".ndpi", ".scn", ".bif", ".svslide") + TIFF_EXTENSIONS
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
BACKENDS = ("auto", "openslide", "tifffile", "pillow", "tiatoolbox")


def implausible_mpp(mpp: float, source: str, path: str | Path | None = None) -> PipelineInputError | None:
    """The error for a resolution outside MPP_MIN..MPP_MAX (None when plausible): one rule for
    metadata and --mpp alike, checked by the CLI before the model loads and per slide."""
    if MPP_MIN <= mpp <= MPP_MAX:
        return None
    if source == "override":
        return PipelineInputError(
            path, f"--mpp {mpp:g} is implausible for a slide (expected {MPP_MIN:g}..{MPP_MAX:g} um/px)",
            f"give the scanner's true value (e.g. --mpp 0.25 for 40x, 0.5 for 20x), or add --force-mpp if {mpp:g} really is right",
        )
    return PipelineInputError(
        path, f"{mpp:g} um/px from {source} is implausible for a slide (expected {MPP_MIN:g}..{MPP_MAX:g})",
        f"{MPP_FIX} (use the scanner's true value)",
    )


def too_coarse(mpp: float, source: str, path: str | Path | None = None) -> PipelineInputError | None:
    """The refusal of a slide whose finest level is coarser than COARSE_MAX_MPP (None when finer)."""
    if mpp <= COARSE_MAX_MPP:
        return None
    return PipelineInputError(
        path, f"its finest level is {mpp:g} um/px ({_said_by(source)}), too coarse for nuclei: they need about {NUCLEUS_MPP:g} um/px "
        f"or finer (a 20x or 40x scan), and at {mpp:g} um/px a nucleus is {5 / mpp:.1f}-{20 / mpp:.0f} px across "
        f"(refused above {COARSE_MAX_MPP:g} um/px)",
        "segment the full-resolution scan (this is a thumbnail or low-magnification export); if the scale is wrong, "
        "give the scanner's value with --mpp (0.25 for 40x, 0.5 for 20x); --force-mpp runs it anyway",
    )


def coarse_warning(mpp: float, source: str, model_mpp: float) -> str | None:
    """The plan's warning for a slide coarser than COARSE_WARN_MPP (None when finer), with the upsampling it costs."""
    if mpp <= COARSE_WARN_MPP:
        return None
    up = mpp / model_mpp
    text = (
        f"the slide's finest level is {mpp:g} um/px ({_said_by(source)}), coarser than the about {NUCLEUS_MPP:g} um/px nuclei need: "
        f"tiles are upsampled x{up:.0f} to the model's {model_mpp:g} um/px"
    )
    if mpp > COARSE_MAX_MPP:  # only with --force-mpp
        return text + f" (--force-mpp; a nucleus is {5 / mpp:.1f}-{20 / mpp:.0f} px in the slide), so expect few or no real nuclei"
    return text + ", so small nuclei may be missed or merged; a 20x or 40x scan of this slide gives better results"


def _said_by(source: str) -> str:
    return "given by --mpp" if source == "override" else source


def resolve_mpp(reader: SlideReader, override: float | None = None, force: bool = False) -> tuple[float, str]:
    """(level-0 um/px, where it came from) for the run: the override if given (recorded as
    "override"), else the file's own value, refused when missing, outside MPP_MIN..MPP_MAX
    or coarser than COARSE_MAX_MPP (an override outside the range, or any coarse slide, only with `force`)."""
    if override is not None:
        reader.apply_mpp_override(override)
        err = None if force else implausible_mpp(float(override), reader.mpp_source, reader.path)
    elif reader.mpp is None:
        err = _missing_mpp_error(reader)
    else:
        err = implausible_mpp(reader.mpp, reader.mpp_source, reader.path)
    if err is None and not force:
        err = too_coarse(float(reader.mpp), reader.mpp_source, reader.path)
    if err is not None:
        raise err
    return float(reader.mpp), reader.mpp_source


_ROI_PATTERN = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")


def parse_roi(text: str, dimensions: tuple[int, int] | None = None,
              path: str | Path | None = None) -> tuple[int, int, int, int]:
    """"x,y,w,h" in level-0 pixels -> (x, y, w, h), checked against the slide's `dimensions` if given."""
    match = _ROI_PATTERN.match(str(text))
    example = "e.g. --roi 1000,2000,4096,4096 (x,y,width,height in level-0 pixels)"
    if not match:
        raise PipelineInputError(path, f"--roi {text!r} is not four integers x,y,w,h", f"write it as {example}")
    x, y, w, h = (int(v) for v in match.groups())
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise PipelineInputError(path, f"--roi {text!r} needs x, y >= 0 and w, h > 0", f"write it as {example}")
    if dimensions is not None:
        sw, sh = dimensions
        if x + w > sw or y + h > sh:
            raise PipelineInputError(
                path, f"--roi {text!r} reaches ({x + w}, {y + h}), outside the {sw}x{sh} slide",
                f"keep x+w <= {sw} and y+h <= {sh}",
            )
    return x, y, w, h


def _extension(path: Path) -> str:
    return path.suffix.lower()


def _starts_with(path: Path, magics: Sequence[bytes]) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
    return any(head.startswith(m) for m in magics)


def _choose_backend(path: Path) -> str:
    ext = _extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise PipelineInputError(
            path,
            f"unsupported file type {ext or '(no extension)'!r}",
            f"convert it to a pyramidal (OME-)TIFF, e.g. with bfconvert or vips; readable types: {' '.join(SUPPORTED_EXTENSIONS)}",
        )
    if ext in IMAGE_EXTENSIONS:
        return "pillow"
    if ext in TIFF_BASED_EXTENSIONS and not _starts_with(path, TIFF_MAGICS):
        raise PipelineInputError(
            path, f"is not a slide or image: a {ext} file must be a TIFF, and this one has no TIFF header",
            "check that you passed the slide file itself (not a renamed text, HTML or archive file)",
        )
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return "tifffile"  # OpenSlide ignores OME metadata (mpp) and SubIFD pyramids
    try:
        import openslide
    except ImportError as exc:  # a broken install, not a user's file problem: still say what to do
        raise PipelineInputError(path, f"OpenSlide is not importable ({exc})", "pip install openslide-python openslide-bin") from exc
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - detection must never be the thing that crashes
        fmt = None
    if fmt is not None:
        return "openslide"
    if ext in TIFF_EXTENSIONS:
        return "tifffile"  # flat or non-standard TIFFs OpenSlide refuses
    raise PipelineInputError(
        path, f"OpenSlide cannot read this {ext} file: it is truncated, corrupt or not a slide",
        "copy the file again or re-export it from the scanner software, and check that it opens in QuPath",
    )


def open_slide(path: str | Path, backend: str = "auto", mpp_override: float | None = None) -> SlideReader:
    """Open a slide or image with the named backend ("auto" picks by content and extension).

    Bad input (missing, not a slide, truncated, unsupported) raises PipelineInputError. The
    file is probe-read, so truncation shows up here rather than hours into a run. Missing mpp
    is not an error here (a thumbnail needs none); `resolve_mpp` decides before tiling.
    """
    p = Path(path)
    if not p.exists():
        raise PipelineInputError(p, "file not found", "check the path and that the file system holding it is mounted")
    if p.is_dir():
        raise PipelineInputError(p, "is a folder, not a slide file", "pass the slide file itself (for MIRAX, the .mrxs file beside its folder)")
    if backend not in BACKENDS:
        raise PipelineInputError(p, f"unknown slide backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    chosen = _choose_backend(p) if backend == "auto" else backend
    return opened(BACKEND_CLASSES[chosen], p, mpp_override)
