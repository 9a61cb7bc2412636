"""(b) The full pipeline on a slide region, and the memory check: the same run on a region
and on one of twice the area, each in a fresh process (`pipeline_child`).

The child's peak RSS comes from the kernel (`os.wait4` gives that one child's
`ru_maxrss`, together with the peak the child read before it reset its high-water mark), so
nothing of the parent (or of an earlier run) counts in it. Memory must not
double with the area: tiles stream through a bounded queue and nuclei go to disk batch by
batch. The fixed part (Python, torch, the model; loading the checkpoint is the process's
highest moment on small runs) dominates, so the child also reports the highest RSS while
`segment_slide` ran and what that adds over the process right after loading the model; the
ratio of those additions is the sensitive check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .inputs import doubled_roi, roi_text, slide_dimensions
from .machine import REPO


@dataclass
class PipelineOptions:
    device: str = "auto"
    weights: str | None = None
    tile_size: int = 1024
    overlap: int = 128
    batch_size: int = 8
    workers: int = 4
    profile: bool = False  # time each stage in the child (profile_probes.py)


def run_child(slide: Path, roi: tuple[int, int, int, int] | None, opts: PipelineOptions) -> dict[str, Any]:
    """One pipeline run in a fresh process; its figures plus the kernel's peak RSS for it."""
    with tempfile.TemporaryDirectory(prefix="pns-bench-") as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "child.log"
        cmd = [sys.executable, "-m", "benchmarks.pipeline_child", "--slide", str(slide), "--out", str(Path(tmp) / "out"), "--result", str(result),
               "--device", opts.device, "--tile-size", str(opts.tile_size), "--overlap", str(opts.overlap),
               "--batch-size", str(opts.batch_size), "--workers", str(opts.workers)]
        if roi is not None:
            cmd += ["--roi", roi_text(roi)]
        if opts.weights:
            cmd += ["--weights", opts.weights]
        if opts.profile:
            cmd.append("--profile")
        t0 = time.monotonic()
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        if proc.returncode != 0 or not result.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"pipeline run on {slide} (roi {roi_text(roi)}) exited {proc.returncode}:\n" + "\n".join(tail))
        out = json.loads(result.read_text())
        rep = out.get("report", {})
        out["process_wall_seconds"] = round(wall, 3)
        # the child resets its high-water mark after loading the model, which lowers the
        # kernel's figure too: the process's peak is the higher of the two moments
        out["process_peak_rss_mb"] = round(max(usage.ru_maxrss / 1024, out.get("peak_rss_during_load_mb") or 0.0), 1)  # Linux: KiB
        out["slide"] = str(slide)
        out["roi"] = roi_text(roi)
        for key in ("nuclei", "tiles", "tiles_per_second", "nuclei_per_second", "wall_seconds", "peak_rss_mb", "tissue_fraction"):
            out[key] = rep.get(key)
        return out


def bench_memory(slide: Path, base: tuple[int, int, int, int], opts: PipelineOptions, reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    """Peak RSS of a run on `base` and on the region of twice its area (`doubled_roi`);
    `reuse` is a pipeline result that already covers one of the two regions with the same
    options, so that run is not made twice."""
    small, large = base, doubled_roi(base, slide_dimensions(slide), slide)
    runs = {}
    for name, roi in (("area_1x", small), ("area_2x", large)):
        if reuse is not None and reuse.get("roi") == roi_text(roi):
            runs[name] = {**reuse, "reused_from": "pipeline"}
        else:
            runs[name] = run_child(slide, roi, opts)
    a, b = runs["area_1x"], runs["area_2x"]
    area_ratio = (large[2] * large[3]) / (small[2] * small[3])

    def ratio(key: str) -> float | None:
        x, y = a.get(key), b.get(key)
        return round(y / x, 3) if x and y is not None else None

    return {
        "regions": {"area_1x": roi_text(small), "area_2x": roi_text(large)},
        "area_ratio": round(area_ratio, 4),
        "tiles_ratio": ratio("tiles"),
        "nuclei_ratio": ratio("nuclei"),
        "peak_rss_ratio": ratio("process_peak_rss_mb"),
        "run_peak_rss_ratio": ratio("run_peak_rss_mb"),
        "run_increment_ratio": ratio("run_increment_mb"),
        "peak_rss_doubles": bool((ratio("process_peak_rss_mb") or 0) >= 1.9 or (ratio("run_peak_rss_mb") or 0) >= 1.9),
        "runs": runs,
    }
