"""The plan's time estimate and the bar's ETA from real model calls; the report's estimate fields.

Nothing here asserts a speed: the figures are whatever this machine gives, and the tests check
that the estimate and the ETA are made of them as documented (estimate.py, progress.py).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptnucseg.wsi_pipeline.estimate import (
    FINISH_S_PER_NUCLEUS, ROUGH_WINDOW_S, TILE_OVERHEAD_S, CpuWatch, MachineLoad, estimate, probe_model, probe_window,
    tile_windows, usable_cores, windows_to_run,
)
from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
from promptnucseg.wsi_pipeline.progress import RATE_AFTER_TILES, SlideProgress
from promptnucseg.wsi_pipeline.segment import segment_slide
from promptnucseg.wsi_pipeline.slides import open_slide
from conftest import HE_CELLS

# 4 tiles of 640 (25 windows, 5 of them on the glass strip and not run); tiles of 448: 6 tiles of 2-4 windows
SETTINGS = SegmentSettings(tile_size=640, overlap=64, mpp=0.25, progress=False, formats=("table",))


@pytest.fixture(scope="module")
def cells_png(tmp_path_factory) -> Path:
    """The suite's real H&E fixture (1024x640) with a strip of blank glass (white) on its right,
    320 px: windows that lie on the strip hold no tissue and are not run."""
    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))
    rgb = np.concatenate([rgb, np.full((rgb.shape[0], 320, 3), 255, np.uint8)], 1)
    path = tmp_path_factory.mktemp("img") / "cells.png"
    Image.fromarray(rgb).save(path)
    return path


def _plan(path: Path, predictor, settings: SegmentSettings = SETTINGS):
    reader = open_slide(path)
    return reader, plan_slide(reader, settings, predictor.facts())


def test_windows_to_run_are_the_windows_the_predictor_runs(predictor, cells_png):
    reader, plan = _plan(cells_png, predictor)
    with reader:
        before = predictor.windows.run
        for tile in plan.tiles:
            x0, y0, _, _ = plan.level0_box(tile)
            rgb = reader.read_scaled(x0, y0, tile.w, tile.h, plan.scale)
            predictor.predict([rgb], None, [plan.tissue_on(tile)])
        ran = predictor.windows.run - before
    assert windows_to_run(plan, plan.tiles) == ran > 0
    size, step = plan.grid.window_grid
    every = sum(math.ceil(max(t.w - size, 0) / step + 1) * math.ceil(max(t.h - size, 0) / step + 1) for t in plan.tiles)
    assert ran < every  # the glass strip's windows are neither run nor counted


def test_the_estimate_is_made_of_a_real_test_window(predictor, cells_png):
    reader, plan = _plan(cells_png, predictor)
    with reader:
        tile, x, y = probe_window(plan, plan.tiles)
        size = plan.grid.window_grid[0]
        assert plan.tissue_on(tile).any_in(x, y, x + size, y + size)  # tissue, not glass
        probe = probe_model(predictor, reader, plan, plan.tiles)
    assert probe is not None and probe.first_s > 0 and probe.window_s > 0 and probe.nuclei > 0
    assert probe.device == "cpu" and probe.threads is not None and probe.threads >= 1
    assert probe.load.cores == usable_cores()
    est = estimate(plan, plan.tiles, 1.5, probe)
    windows = windows_to_run(plan, plan.tiles)
    tiles = sum(tile_windows(plan, t) > 0 for t in plan.tiles)
    size, step = plan.grid.window_grid
    finish = probe.nuclei * windows * (step / size) ** 2 * FINISH_S_PER_NUCLEUS
    assert est.measured and est.windows == windows and est.tiles == tiles and est.window_s == probe.window_s
    assert est.seconds == pytest.approx(1.5 + windows * probe.window_s + tiles * TILE_OVERHEAD_S + finish)
    line = est.line()
    assert line.startswith("estimated ")
    assert " in all = 1.5 s so far (checks, model loading, planning, test window)" in line
    assert f"{windows} tissue windows x {probe.window_s:.2f} s" in line
    assert f"from a {probe.window_s:.2f} s test window on {probe.threads} thread" in line
    assert ("this machine is busy" in line) == probe.load.busy
    record = est.record()
    assert record["first_estimate_s"] == round(est.seconds, 2) and record["windows"] == windows
    assert record["machine"]["cores"] == usable_cores()


def test_without_a_model_the_estimate_says_it_is_rough(predictor, cells_png):
    reader, plan = _plan(cells_png, predictor)
    with reader:
        est = estimate(plan, plan.tiles, 0.0, None, "cuda:0")
    assert not est.measured and est.window_s == ROUGH_WINDOW_S
    line = est.line()
    assert line.startswith("roughly ") and "not measured on this machine" in line and "a GPU is faster" in line


def test_a_busy_machine_is_said_to_be_busy():
    assert MachineLoad(3.2, 2).note() == "this machine is busy: load 3.2 on 2 cores; the estimate assumes it stays so"
    assert MachineLoad(1.5, 2).note() is None and not MachineLoad(None, 2).busy
    heavy = MachineLoad(0.4, 16, ("python (pid 12, 1.0 cores)",))
    assert heavy.busy and "also running: python (pid 12, 1.0 cores)" in heavy.note()
    crowded = MachineLoad(0.4, 2, (), 1.6)  # several processes, none heavy alone, took most of the cores
    assert crowded.busy and "other processes used 1.6 of the 2 cores during the test window" in crowded.note()
    assert not MachineLoad(0.4, 2, (), 0.3).busy


def test_the_cpu_watch_sees_another_process_work():
    spin = (
        "import sys,time\nprint('ready',flush=True)\nsys.stdin.readline()\n"
        "while time.process_time()<0.3: pass\nprint('done',flush=True)\ntime.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        watch = CpuWatch().start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"  # it has used 0.3 s of CPU since the watch started
        seen = [h for h in watch.heavy(share=1e-9) if f"(pid {child.pid}," in h]
        assert len(seen) == 1 and seen[0].startswith("python")
        assert not [h for h in watch.heavy(share=1e-9) if f"(pid {os.getpid()}," in h]  # never this process
        assert watch.used()[1] > 0  # the child's CPU counts among the others' cores
    finally:
        child.kill()
        child.wait()


def test_the_eta_counts_tissue_windows_from_the_test_window_then_the_real_rate(predictor, cells_png):
    reader, plan = _plan(cells_png, predictor, SegmentSettings(tile_size=448, overlap=64, mpp=0.25, progress=False))
    with reader:
        probe = probe_model(predictor, reader, plan, plan.tiles)
        windows = [tile_windows(plan, t) for t in plan.tiles]
        bar = SlideProgress(
            "cells", len(plan.tiles), 0, plan.tissue_mm2,
            windows_left=sum(windows), window_s=probe.window_s, enabled=False,
        )
        assert bar.eta_seconds() == (pytest.approx(sum(windows) * probe.window_s), False) and " est." in bar.eta()
        done = 0
        for k, (tile, n) in enumerate(zip(plan.tiles, windows)):
            x0, y0, _, _ = plan.level0_box(tile)
            rgb = reader.read_scaled(x0, y0, tile.w, tile.h, plan.scale)
            found = predictor.predict([rgb], None, [plan.tissue_on(tile)])
            if k == 0:
                clock = time.monotonic()
            bar.tile_done(len(found[0].points), n)
            done += n
            seconds, measured = bar.eta_seconds()
            rate = bar.rate()[0]
            assert measured == (k >= RATE_AFTER_TILES)  # the test window's rate until a few tiles after the first
            if measured:
                timed = sum(windows[1 : k + 1])
                assert clock <= bar._clock and rate == pytest.approx((time.monotonic() - bar._clock) / timed, rel=0.05)
            else:
                assert rate == probe.window_s
            assert seconds == pytest.approx((sum(windows) - done) * rate, rel=0.05)  # per window left, not per tile
            if k >= RATE_AFTER_TILES + 1:
                break
    assert k == RATE_AFTER_TILES + 1, "the fixture has too few tiles for the measured rate"
    assert " est." not in bar.eta() and "s/window" in bar.eta()
    bar.close()


def test_the_report_keeps_the_first_estimate_and_the_real_time(tmp_path, predictor, cells_png):
    said: list[str] = []
    report = segment_slide(cells_png, tmp_path, predictor, SETTINGS, log=said.append, load_seconds=2.0)
    est = report["time_estimate"]
    assert est["measured"] and est["first_estimate_s"] > 2.0 and est["so_far_s"] >= 2.0
    assert est["real_s"] >= 2.0 + report["wall_seconds"] - 0.01
    assert est["real_over_estimate"] == pytest.approx(est["real_s"] / est["first_estimate_s"], abs=2e-3)
    assert est["windows"] == report["windows_this_run"] - report["windows_skipped_no_tissue_this_run"]
    assert est["machine"]["cores"] == usable_cores() and isinstance(est["machine"]["busy"], bool)
    plan_line = next(m for m in said if ": plan: " in m)
    assert " in all" in plan_line and "roughly" not in plan_line
    time_line = next(m for m in said if ": time: " in m)
    assert "test window on" in time_line and "tissue windows x" in time_line
