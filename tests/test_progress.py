"""The progress bar's rate leaves out the first tile's warm-up and a resumed run's earlier tiles."""
from __future__ import annotations

import time

from promptnucseg.wsi_pipeline.progress import SlideProgress


def test_rate_starts_after_the_warm_up_tile_and_counts_this_run_only():
    bar = SlideProgress("slide", total_tiles=20, tiles_done=8, tissue_mm2=2.0, nuclei_done=500)  # resumed: 8 done
    time.sleep(0.3)  # warm-up: the first tile is slow
    bar.tile_done()
    fmt = bar._bar.format_dict
    assert fmt["n"] == 9 and (fmt["n"] - fmt["initial"]) == 0  # no rate from the warm-up tile ("?")
    for _ in range(3):
        time.sleep(0.02)
        bar.tile_done()
    fmt = bar._bar.format_dict
    rate = (fmt["n"] - fmt["initial"]) / fmt["elapsed"]
    assert 10 < rate < 60  # ~1 tile / 0.02 s: neither the 0.3 s warm-up nor the 8 earlier tiles count
    bar.batch_done(40)
    assert "tissue 1.20/2.00 mm²" in fmt["postfix"] and bar.nuclei_done == 540
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
