"""The progress bar's rate leaves out the first tile's warm-up and a resumed run's earlier tiles."""
from __future__ import annotations

import time

import pytest

from promptnucseg.wsi_pipeline.progress import RATE_AFTER_TILES, SlideProgress


def test_rate_starts_after_the_warm_up_tile_and_counts_this_run_only():
    # resumed: 8 tiles done before
    bar = SlideProgress("slide", total_tiles=20, tiles_done=8, tissue_mm2=2.0, nuclei_done=500, windows_left=48)
    assert bar.eta() is None and "warm-up" in bar._bar.format_dict["postfix"]  # no test window: no guess
    time.sleep(0.3)  # warm-up: the first tile is slow
    warmed = time.monotonic()
    bar.tile_done(0, 4)
    fmt = bar._bar.format_dict
    assert fmt["n"] == 9 and bar.eta() is None and "warm-up done" in fmt["postfix"]  # no rate from the warm-up tile
    for k in range(RATE_AFTER_TILES):
        time.sleep(0.02)
        bar.tile_done(0, 2 + k)  # tiles at the tissue's edge run fewer windows
    seconds, measured = bar.eta_seconds()
    rate, _ = bar.rate()
    assert measured and bar._clock >= warmed  # the clock starts after the warm-up tile: its 0.3 s is not in the rate
    assert seconds == pytest.approx((48 - 4 - 2 - 3 - 4) * rate, rel=0.05)  # windows left, not tiles left
    assert "ETA " in bar._bar.format_dict["postfix"] and "s/window" in bar._bar.format_dict["postfix"]
    bar.batch_done(40)
    assert "tissue 1.20/2.00 mm²" in bar._bar.format_dict["postfix"] and bar.nuclei_done == 540
    bar.close()


def test_before_its_own_rate_the_eta_is_the_test_windows_and_says_so():
    bar = SlideProgress("slide", total_tiles=4, tiles_done=0, tissue_mm2=1.0, windows_left=10, window_s=0.5)
    assert bar.eta_seconds() == (5.0, False) and bar.eta() == "ETA 00:05 est. (0.50 s/window)"
    bar.tile_done(3, 4)
    assert bar.eta_seconds() == (3.0, False) and "est." in bar._bar.format_dict["postfix"]
    bar.close()


def test_nuclei_count_moves_with_each_tile_before_its_batch_is_journaled():
    bar = SlideProgress("slide", total_tiles=16, tiles_done=0, tissue_mm2=1.0)
    bar.tile_done(30)
    assert "~30 nuclei" in bar._bar.format_dict["postfix"]  # used to read 0 until 8 tiles were journaled
    bar.tile_done(12)
    assert "~42 nuclei" in bar._bar.format_dict["postfix"]
    bar.batch_done(38, tiles=2)  # stitched: overlap duplicates gone, the exact count replaces the estimate
    assert bar.nuclei_done == 38 and "38 nuclei" in bar._bar.format_dict["postfix"] and "~" not in bar._bar.format_dict["postfix"]
    bar.close()
