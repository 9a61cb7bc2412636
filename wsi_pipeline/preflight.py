"""Checks before hours of work, and the plan printed in the first seconds.

Why: an absurd setting used to run for hours (`--mpp 50` on a small image: 4,500 tiles,
nothing printed), a huge `--tile-size` was taken silently, and a full disk showed up as a
bare `[Errno 28]` after the slide had been segmented. Each check here says what it measured,
why it refuses, and the fix. The figures are estimates from measured runs (docs/benchmarks.md), stated as
such in every message.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import PipelineInputError

if TYPE_CHECKING:
    from .plan import SegmentSettings, SlidePlan

# Memory: each tile in flight holds its RGB (3 B/px) in the read-ahead queue, the model's float
# copies and masks, then post-processing; 48 B per tile pixel per batch slot covers a 1024-px
# batch of 8 (measured run peak 1.35 GB, ~1 GB of it the model) with room to spare.
BYTES_PER_TILE_PIXEL = 48
TILE_SLOTS_PER_BATCH = 5  # 2 batches read ahead + 1 in the model + 2 in post-processing
MEMORY_SHARE = 0.5  # of the memory available now; the rest is the model's and the system's

# Disk, per nucleus, measured on CMU-1-Small-Region (1,560 nuclei: GeoJSON 1,004 B, zarr 315 B,
# parquet 121 B) and rounded up; the journal's parts (npz) sit beside the outputs until the end.
BYTES_PER_NUCLEUS = {"geojson": 1100, "geojson.gz": 300, "zarr": 350, "table": 150, "parts": 450}
NUCLEI_PER_MM2 = 10_000  # dense tissue (the sample: 6,300 per mm² of tissue)
LABEL_MAP_BYTES_PER_PX = 4  # uint32 labels
REPORT_BYTES = 64 * 1024

# Time: on 2 CPU cores a 1024-px tile takes ~1.7 s (docs/benchmarks.md).
CPU_SECONDS_PER_MEGAPIXEL = 1.7 / (1024 * 1024 / 1e6)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a folder made read-only (or taken away) mid-run


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux MemAvailable), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    """Bytes in decimal units, as df -H prints them."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            break
        n /= 1000
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def tile_memory_bytes(tile_size: int, batch_size: int) -> int:
    return tile_size * tile_size * BYTES_PER_TILE_PIXEL * TILE_SLOTS_PER_BATCH * batch_size


def check_tile_memory(tile_size: int, batch_size: int, available: int | None = None) -> None:
    """Refuse a tile size whose batches in flight would not fit in this machine's memory."""
    available = available_memory() if available is None else available
    need = tile_memory_bytes(tile_size, batch_size)
    if available is None or need <= MEMORY_SHARE * available:
        return
    fits = int((MEMORY_SHARE * available / (BYTES_PER_TILE_PIXEL * TILE_SLOTS_PER_BATCH * batch_size)) ** 0.5) // 32 * 32
    raise PipelineInputError(
        None,
        f"--tile-size {tile_size} with --batch-size {batch_size} would hold ~{_size(need)} of tiles in memory "
        f"({TILE_SLOTS_PER_BATCH} batches of {tile_size}x{tile_size} px in flight, estimated) but {_size(available)} is available",
        f"use --tile-size {max(64, min(fits, 1024))} or a smaller --batch-size (tiles above the default 1024 are no faster: the model sees 256-px windows)",
    )


def plan_summary(plan: "SlidePlan", tiles_left: int, batches_left: int, device: str) -> str:
    """One line that makes a wrong setting visible before work starts."""
    x, y, w, h = plan.roi
    if abs(plan.scale - 1) < 0.005:
        zoom = "not resampled (already"
    else:
        zoom = f"resampled x{1 / plan.scale:.2f} up to" if plan.scale < 1 else f"resampled 1/{plan.scale:.2f} down to"
    seconds = estimated_seconds(plan, tiles_left)
    where = "on 2 CPU cores" if not str(device).startswith("cuda") else "at 2-CPU-core speed (a GPU is faster; no GPU figure measured yet)"
    whole = (x, y, w, h) == (0, 0, *plan.dimensions)
    if whole:
        share = plan.tissue_fraction
    else:  # under --roi the share of the region, not of the slide
        region_mm2 = w * h * plan.slide_mpp**2 / 1e6
        share = plan.tissue_mm2 / region_mm2 if region_mm2 > 0 else 0.0
    return (
        f"{plan.path.name}: plan: {w}x{h} level-0 px at {plan.slide_mpp:g} um/px ({plan.mpp_source}), read from level {plan.read_level}, "
        f"{zoom} the model's {plan.model_mpp:g} um/px{')' if zoom.startswith('not') else ''}; "
        f"{_count(len(plan.tiles), 'tile')} of {plan.grid.tile_size} px in {_count(len(plan.batches), 'batch')} ({batches_left} to run); "
        f"tissue {_mm2(plan.tissue_mm2)} ({_share(share)} of the {'slide' if whole else 'region'}); estimated {_duration(seconds)} {where}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"


def _mm2(value: float) -> str:
    """Tissue area with two significant figures when small (a biopsy crumb is not "0.00 mm²")."""
    return f"{value:.2f} mm²" if value >= 0.1 or value == 0 else f"{value:.2g} mm²"


def _share(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.1%}" if value >= 0.001 else "<0.1%"


def estimated_seconds(plan: "SlidePlan", tiles: int) -> float:
    return tiles * plan.grid.tile_size**2 / 1e6 * CPU_SECONDS_PER_MEGAPIXEL


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimated_output_bytes(plan: "SlidePlan", settings: "SegmentSettings") -> int:
    """Disk the slide's journal and outputs need at their peak (just before the journal goes)."""
    nuclei = plan.tissue_mm2 * NUCLEI_PER_MM2
    unmeasured = max(BYTES_PER_NUCLEUS.values())  # a format without a figure: assume the largest
    names = ["parts", *("geojson.gz" if f == "geojson" and settings.gzip else f for f in settings.formats)]
    per = sum(BYTES_PER_NUCLEUS.get(name, unmeasured) for name in names)
    total = nuclei * per + REPORT_BYTES
    if settings.label_map:
        total += plan.dimensions[0] * plan.dimensions[1] * LABEL_MAP_BYTES_PER_PX
    return int(total)


def check_free_space(folder: Path, plan: "SlidePlan", settings: "SegmentSettings", already: int = 0) -> None:
    """Refuse to start a slide whose outputs (estimated) do not fit on the disk holding `folder`.

    `already`: bytes the journal holds from an earlier run, which count as written.
    """
    need = max(0, estimated_output_bytes(plan, settings) - already)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise PipelineInputError(
            folder,
            f"the disk holding it has {_size(free)} free, but this slide's outputs need about {_size(need)} "
            f"(estimated: {plan.tissue_mm2:.2f} mm² of tissue at up to {NUCLEI_PER_MM2:,} nuclei per mm²)",
            "free space there or choose an --out on a larger disk, then run the same command again",
        )


@contextmanager
def disk_full_explained(folder: Path) -> Iterator[None]:
    """Turn a full disk or quota (ENOSPC, EDQUOT) met while writing under `folder` into a
    message naming the folder and the fix; finished batches stay journaled for the rerun."""
    try:
        yield
    except OSError as err:
        if err.errno in UNWRITABLE:
            raise PipelineInputError(
                folder, f"became unwritable while writing{f' {Path(err.filename).name}' if err.filename else ''} ({err.strerror})",
                f"make {folder} writable again (remount it read-write, fix its permissions), then run the same command again: "
                "finished batches are kept and the run resumes",
            ) from err
        if err.errno not in DISK_FULL:
            raise
        raise PipelineInputError(
            folder,
            f"the disk holding it filled up while writing{f' {Path(err.filename).name}' if err.filename else ''} ({err.strerror})",
            f"free space on the disk holding {folder} (df -h) or raise the quota, then run the same command again: "
            "finished batches are kept and the run resumes",
        ) from err
