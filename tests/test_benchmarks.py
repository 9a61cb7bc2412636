"""The benchmarks measure what they say: a stage's peak RSS sees an allocation, the memory
part's doubled region really has twice the area, and a quick stitch run on real nuclei writes
a complete JSON whose nucleus counts follow the grid. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, need

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA
KUMAR = DATA / "kumar" / "train" / "images"
if str(REPO) not in sys.path:  # `benchmarks/` is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.inputs import doubled_roi  # noqa: E402
from benchmarks.machine import StagePeak  # noqa: E402
from promptnucseg.wsi_pipeline.errors import PipelineInputError  # noqa: E402


def test_stage_peak_sees_a_100_mb_allocation_that_is_freed_before_it_ends():
    with StagePeak() as mem:
        block = np.ones(100 * 2**20 // 8)  # 100 MiB, touched
        del block
    assert mem.growth_mb is not None and mem.growth_mb >= 80, (mem.method, mem.start_mb, mem.peak_mb)
    with StagePeak() as quiet:
        sum(range(1000))
    assert quiet.growth_mb is not None and quiet.growth_mb < 50, (quiet.method, quiet.start_mb, quiet.peak_mb)


def test_doubled_roi_is_twice_the_area_inside_the_slide():
    assert doubled_roi((10, 20, 100, 50), (500, 500)) == (10, 20, 100, 100)  # taller fits
    assert doubled_roi((10, 400, 100, 80), (500, 500)) == (10, 400, 200, 80)  # only wider fits
    with pytest.raises(PipelineInputError, match="neither twice its height nor twice its width"):
        doubled_roi((300, 300, 150, 150), (500, 500))


@pytest.mark.slow
def test_quick_stitch_run_writes_complete_json(tmp_path):
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    need(KUMAR)
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "stitch", "--device", "cpu",
           "--stitch-tiles", "1", "--stitch-grid", "3x1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(c) stitch + export alone" in proc.stdout and "microseconds per nucleus" in proc.stdout

    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["finished"]
    machine = result["machine"]
    assert machine["device"] == "cpu" and machine["cpu_model"] and machine["cpu_usable_cores"] >= 1 and machine["torch"]
    assert result["model"]["weights_sha256"] and "kumar" in result["inputs"]["tiles"]

    stitch = result["results"]["stitch"]
    per_tile = stitch["source_nuclei"]
    assert stitch["source_tiles"] == 1 and per_tile > 0
    sizes = stitch["sizes"]
    assert [s["multiplier"] for s in sizes] == [1, 3, 10]
    assert [s["tiles"] for s in sizes] == [3, 9, 30]
    for s in sizes:
        assert s["nuclei_on_tiles"] == s["tiles"] * per_tile  # every tile carries the real nuclei
        assert 0 < s["nuclei"] <= s["nuclei_on_tiles"]  # ownership keeps each once, drops the overlap's copies
        for stage, seconds in s["seconds"].items():
            assert s["us_per_nucleus"][stage] == pytest.approx(seconds * 1e6 / s["nuclei"], rel=0.02, abs=0.05)
        assert all(v > 0 for v in s["output_bytes"].values())
        assert s["peak_rss_mb"] > 0
    nuclei = [s["nuclei"] for s in sizes]
    assert nuclei[0] < nuclei[1] < nuclei[2]
    assert stitch["growth"]["nuclei_ratio"] == pytest.approx(nuclei[2] / nuclei[0], rel=1e-3)


@pytest.mark.slow
@pytest.mark.shared_data
def test_quick_peers_run_measures_ours_and_says_which_peers_were_skipped(tmp_path):
    """With no peer venv (an empty --peer-venvs), every peer this interpreter cannot import is
    skipped with the install command, ours is still measured, and ratios are to ours."""
    import importlib.util

    from benchmarks.peers import PEERS

    need(KUMAR)
    empty = tmp_path / "no-venvs"
    empty.mkdir()
    out = tmp_path / "peers.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--peers", "--quick", "--device", "cpu", "--peer-venvs", str(empty), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    peers = result["results"]["peers"]
    assert peers["rows"]["ours"]["speed_vs_ours"] == 1.0 and peers["rows"]["ours"]["mm2_per_second"] > 0 and peers["rows"]["ours"]["peak_rss_mb"] > 0
    for peer in PEERS:
        here = importlib.util.find_spec(peer.module.split(".")[0]) is not None
        if here:
            assert peer.name in peers["rows"] or peer.name in peers["skipped"]
        else:
            assert "not installed" in peers["skipped"][peer.name] and "install_peers.sh" in peers["skipped"][peer.name]
            assert f"skipped {peer.name}: not installed" in proc.stdout
    assert "peers:" in proc.stdout and "x ours (speed)" in proc.stdout


@pytest.mark.slow
@pytest.mark.shared_data
def test_quick_profile_accounts_for_every_tile_and_the_model_busy_fraction(tmp_path):
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    from benchmarks.inputs import DEFAULT_SLIDE
    from benchmarks.profile_probes import STAGES

    if not BUNDLED_WEIGHTS.is_file() or not DEFAULT_SLIDE.is_file():
        pytest.skip(f"needs the bundled model and {DEFAULT_SLIDE}")
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--only", "profile", "--quick", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["results"]["profile"]["runs"]
    prof = run["profile"]
    assert prof["calls"]["model"] == prof["calls"]["read"] == prof["calls"]["postprocess"] == run["tiles"] > 0
    assert prof["calls"]["tissue_mask"] >= 1 and prof["calls"]["export"] == 1
    assert 0 < prof["model_busy_fraction"] <= 1
    main_thread = sum(prof["seconds"][k] for k in ("tissue_mask", "plan_other", "model", "loop_wait", "export"))
    assert main_thread <= prof["wall_seconds"] * 1.01  # the main thread's stages do not overlap each other
    assert set(prof["share_of_wall"]) == set(STAGES)


def test_training_part_times_every_variant_and_each_computes_the_same_step(tmp_path):
    """The training part times each speed-up alone and together on both networks (small widths,
    2 crops), and every variant's loss and gradients match the step as it was (no timing asserted)."""
    import yaml

    from benchmarks.train_bench import bench_training

    need(KUMAR)
    cfg = yaml.safe_load((REPO / "configs" / "kumar_light_v2.yaml").read_text())
    cfg["model"]["prompter"]["fpn_channels"] = 32
    cfg["model"]["segmentor"].update(embed_dim=64, decoder_mlp_dim=128)
    cfg["data"]["train"] = [str(KUMAR.parent)]
    cfg["train"].update(batch_size=2, nuclei_per_crop=4)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = bench_training(str(path), steps=1, rounds=1)
    want = {
        "prompter": ["before", "+prefetch", "+channels-last", "after"],
        "segmentor": ["before", "+prefetch", "+channels-last", "+fused-loss", "after"],
    }
    for kind, names in want.items():
        rows = r["networks"][kind]
        assert list(rows) == names
        for name, row in rows.items():
            assert row["seconds_per_step"] > 0 and set(row["parts"]) == {"data", "forward_loss", "backward", "optimizer"}
        # the batch made ahead is the very batch; the fused loss differs by float rounding; the
        # channels-last convolutions round differently, and on the prompter a rounding-level
        # change can flip one Hungarian assignment, so a looser bound there
        assert rows["+prefetch"]["max_relative_difference"] == 0.0
        assert rows["+channels-last"]["max_relative_difference"] < 2e-2
    assert r["networks"]["segmentor"]["+fused-loss"]["max_relative_difference"] < 1e-4
