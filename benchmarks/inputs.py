"""Real inputs for the benchmarks: 256-px H&E tiles and a slide, with defaults from the shared
data beside the repo and the sample slide as the fallback."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from promptnucseg.wsi_pipeline.errors import PipelineInputError

from .machine import REPO

SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_KUMAR = SHARED_DATA / "kumar" / "train" / "images"
DEFAULT_SLIDE = SHARED_DATA / "slides" / "cmu_small_region.svs"
KUMAR_MPP = 0.25  # Kumar's images: 40x, 0.25 um/px
TILE = 256  # the model's SAM window: the size the model-alone figures are for


def resolve_slide(path: str | Path | None) -> Path:
    """The slide given, else the shared CMU slide, else the package's sample slide."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise PipelineInputError(p, "no such slide", "pass --slide an existing file, or leave it out to use the sample slide")
        return p
    if DEFAULT_SLIDE.is_file():
        return DEFAULT_SLIDE
    from promptnucseg.wsi_pipeline.sample import sample_slide

    return sample_slide(log=lambda m: print(m, file=sys.stderr))


def kumar_tiles(folder: str | Path | None, count: int, tile: int = TILE) -> tuple[list[np.ndarray], str]:
    """`count` distinct `tile`-px RGB tiles cut on a non-overlapping grid from the PNGs of
    `folder` (sorted by name, row-major per image), and a line saying where they came from.
    Kumar images are at 0.25 um/px, the model's scale, so no resampling is involved."""
    from PIL import Image

    root = Path(folder) if folder is not None else DEFAULT_KUMAR
    images = sorted(root.glob("*.png")) if root.is_dir() else []
    if not images:
        if folder is not None:
            raise PipelineInputError(root, "holds no .png images", "pass --tiles a folder of H&E PNGs at the model's scale (0.25 um/px), or leave it out to cut tiles from the slide")
        return [], ""
    tiles: list[np.ndarray] = []
    used: list[str] = []
    for path in images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        used.append(path.name)
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                tiles.append(np.ascontiguousarray(rgb[y : y + tile, x : x + tile]))
                if len(tiles) == count:
                    return tiles, f"{len(tiles)} tiles of {tile} px from {root} ({', '.join(used)})"
    if len(tiles) < count:
        raise PipelineInputError(root, f"holds only {len(tiles)} tiles of {tile} px in its PNGs, {count} needed", "pass --tiles a folder with more (or larger) images")
    return tiles, f"{len(tiles)} tiles of {tile} px from {root}"


def kumar_images(folder: str | Path | None, count: int, crop: int | None = None) -> tuple[list[np.ndarray], str]:
    """The first `count` whole H&E images of `folder` (sorted by name; `crop`: only their
    top-left `crop` x `crop`), and a line saying which: the same real tissue for every peer."""
    from PIL import Image

    root = Path(folder) if folder is not None else DEFAULT_KUMAR
    paths = sorted(root.glob("*.png"))[:count] if root.is_dir() else []
    if len(paths) < count:
        raise PipelineInputError(root, f"holds {len(paths)} .png images, {count} needed", "pass --tiles a folder of H&E PNGs at 0.25 um/px (Kumar's images), or ask for fewer with --peer-images")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if crop:
        images = [np.ascontiguousarray(im[:crop, :crop]) for im in images]
    sizes = ", ".join(f"{p.name} {im.shape[1]}x{im.shape[0]}" for p, im in zip(paths, images))
    return images, f"{len(images)} images from {root}: {sizes}"


def slide_tiles(slide: Path, count: int, model_mpp: float, tile: int = TILE) -> tuple[list[np.ndarray], str]:
    """Tiles read from the slide's tissue at the model's microns per pixel: the fallback when
    there are no Kumar images."""
    from promptnucseg.wsi_pipeline.slides import open_slide, resolve_mpp
    from promptnucseg.wsi_pipeline.tiling import TileGrid
    from promptnucseg.wsi_pipeline.tissue import tissue_mask

    with open_slide(slide) as reader:
        slide_mpp, _ = resolve_mpp(reader)
        scale = model_mpp / slide_mpp
        w0, h0 = reader.dimensions
        grid = TileGrid(max(1, int(w0 / scale)), max(1, int(h0 / scale)), tile, 0)
        mask = tissue_mask(reader)
        boxes = [(t.x * scale, t.y * scale, tile * scale, tile * scale) for t in grid if t.w == tile and t.h == tile]
        boxes = sorted(boxes, key=lambda b: -mask.fraction_in(b))[:count]
        if len(boxes) < count:
            raise PipelineInputError(slide, f"has only {len(boxes)} whole {tile}-px tiles at {model_mpp} um/px, {count} needed", "pass --tiles a folder of H&E PNGs")
        tiles = [reader.read_scaled(x, y, tile, tile, scale) for x, y, _, _ in boxes]
    return tiles, f"{count} tiles of {tile} px read at {model_mpp} um/px from the most tissue-covered places of {slide}"


def real_tiles(folder: str | Path | None, slide: str | Path | None, count: int, model_mpp: float) -> tuple[list[np.ndarray], str]:
    tiles, source = kumar_tiles(folder, count)
    if tiles:
        return tiles, source
    return slide_tiles(resolve_slide(slide), count, model_mpp)


def doubled_roi(roi: tuple[int, int, int, int], dimensions: tuple[int, int], slide: Path | None = None) -> tuple[int, int, int, int]:
    """The region of twice the area with the same origin: twice as tall if that fits in the
    slide, else twice as wide."""
    x, y, w, h = roi
    width0, height0 = dimensions
    if y + 2 * h <= height0:
        return x, y, w, 2 * h
    if x + 2 * w <= width0:
        return x, y, 2 * w, h
    raise PipelineInputError(slide, f"--memory-roi {x},{y},{w},{h}: neither twice its height nor twice its width fits in the {width0}x{height0} slide", "give a smaller region")


def slide_dimensions(slide: Path) -> tuple[int, int]:
    """Level-0 (width, height)."""
    from promptnucseg.wsi_pipeline.slides import open_slide

    with open_slide(slide) as reader:
        width0, height0 = reader.dimensions
    return int(width0), int(height0)


def roi_text(roi: tuple[int, int, int, int] | None) -> str | None:
    return None if roi is None else ",".join(str(int(v)) for v in roi)


def tissue_region(slide: Path, w: int, h: int) -> tuple[int, int, int, int]:
    """The `w` x `h` level-0 region with the most tissue (on a half-size step grid): where a
    small smoke run still finds nuclei, whatever the slide."""
    from promptnucseg.wsi_pipeline.slides import open_slide
    from promptnucseg.wsi_pipeline.tissue import tissue_mask

    with open_slide(slide) as reader:
        width0, height0 = reader.dimensions
        if w > width0 or h > height0:
            raise PipelineInputError(slide, f"is {width0}x{height0} level-0 px, smaller than the {w}x{h} region wanted", "pass a larger slide or an explicit --roi")
        mask = tissue_mask(reader)
    best, where = -1.0, (0, 0)
    for y in range(0, height0 - h + 1, max(1, h // 2)):
        for x in range(0, width0 - w + 1, max(1, w // 2)):
            f = mask.fraction_in((x, y, w, h))
            if f > best:
                best, where = f, (x, y)
    return where[0], where[1], w, h
