"""Overnight safety (issue 15) on real files and real processes: one run per slide folder,
absurd settings refused up front, interrupts that say how to resume, a full disk explained.

Every test asserts the exit status, the message, and that what is on disk is intact and
resumable. Runs use small ROIs of the real sample slide and the bundled model.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.locking import LOCK_NAME, FolderLock, LockOwner
from promptnucseg.wsi_pipeline.plan import SegmentSettings
from promptnucseg.wsi_pipeline.segment import segment_slide
from promptnucseg.wsi_pipeline.slides import open_slide, resolve_mpp
from conftest import SHARED_DATA, sample_slide_or_skip
ROI = ("--roi", "600,900,400,400", "--tile-size", "256", "--overlap", "64", "--batch-size", "1", "--workers", "1")
REPO = Path(__file__).resolve().parents[1]


def segment_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "promptnucseg", "segment", str(sample_slide_or_skip()), "--out", str(out), "--device", "cpu", "--no-progress", *ROI, *extra]


def run_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def journal_lines(folder: Path) -> int:
    progress = folder / ".work" / "progress.jsonl"
    return len(progress.read_text().splitlines()) if progress.is_file() else 0


def wait_for(predicate, timeout: float = 300.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_complete(folder: Path) -> dict:
    """The slide's outputs agree with its report: no empty table behind a 'complete' report."""
    import pyarrow.parquet as pq

    report = json.loads((folder / "cmu_small_region_report.json").read_text())
    assert report["status"] == "complete" and report["nuclei"] > 0
    features = json.loads((folder / "cmu_small_region.geojson").read_text())["features"]
    assert len(features) == report["nuclei"] == pq.read_metadata(folder / "cmu_small_region_nuclei.parquet").num_rows
    assert not (folder / ".work").exists() and not (folder / LOCK_NAME).exists()
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]
    return report


# -- 3. numeric flags: exit 2 at parse time, naming the flag and its range ------------------------

@pytest.mark.parametrize("argv, words", [
    (["--batch-size", "0"], ["--batch-size", "1..1024"]),
    (["--tile-size", "0"], ["--tile-size", "64..16384", "multiple of 32"]),
    (["--tile-size", "1000"], ["--tile-size", "multiple of 32", "e.g. 992"]),
    (["--tile-size", "100000"], ["--tile-size", "64..16384", "larger tiles gain nothing"]),
    (["--overlap", "-1"], ["--overlap", "0.."]),
    (["--workers", "-2"], ["--workers", "1..256"]),
    (["--workers", "two"], ["--workers", "not an integer"]),
    (["--mpp", "nan"], ["--mpp", "finite number > 0"]),
    (["--mpp", "inf"], ["--mpp", "finite number > 0"]),
    (["--mpp", "0"], ["--mpp", "finite number > 0"]),
    (["--mpp", "-0.5"], ["--mpp", "finite number > 0"]),
])
def test_numeric_flags_are_refused_at_parse_time(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "slide.svs", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {argv[0]}" in err, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--tile-size", "256", "--overlap", "256"], ["--overlap 256", "--tile-size 256"]),
    (["--mpp", "50"], ["--mpp 50", "0.05..10", "--force-mpp"]),
    (["--mpp", "0.01"], ["--mpp 0.01", "0.05..10", "--force-mpp"]),
    (["--tile-size", "16384", "--batch-size", "1024"], ["--tile-size 16384", "memory", "available", "--batch-size"]),
])
def test_settings_that_cannot_work_are_refused_before_the_model_loads(tmp_path, capsys, argv, words):
    started = time.monotonic()
    code = main(["segment", str(sample_slide_or_skip()), "--out", str(tmp_path / "out"), "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and "Fix:" in err, err
    for word in words:
        assert word in err, (word, err)
    assert time.monotonic() - started < 5  # no model was loaded, no slide planned
    assert not (tmp_path / "out" / "cmu_small_region").exists()


def test_force_mpp_accepts_an_implausible_resolution_that_is_refused_without_it():
    with open_slide(sample_slide_or_skip()) as reader:
        with pytest.raises(PipelineInputError, match="--force-mpp"):
            resolve_mpp(reader, 50.0)
        assert resolve_mpp(reader, 50.0, force=True) == (50.0, "override")


# -- 6. what is really wrong with an image ------------------------------------------------------

@pytest.mark.parametrize("pixels, says, not_says", [
    (np.zeros((600, 600, 3), np.uint8), "entirely black", "grayscale"),
    (np.full((1, 1, 3), (200, 120, 170), np.uint8), "too small to hold a nucleus", "no tissue"),
])
@pytest.mark.parametrize("tissue_mask", [True, False])
def test_black_and_tiny_images_are_named_for_what_is_wrong(tmp_path, predictor, pixels, says, not_says, tissue_mask):
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    settings = SegmentSettings(tile_size=256, overlap=64, mpp=0.25, progress=False, use_tissue_mask=tissue_mask)
    with pytest.raises(PipelineInputError) as err:
        segment_slide(path, tmp_path / "out", predictor, settings, log=lambda m: None)
    message = str(err.value)
    assert says in message and not_says not in message and "Fix:" in message and str(path) in message
    assert not (tmp_path / "out" / "image" / ".work").exists() and not (tmp_path / "out" / "image" / LOCK_NAME).exists()


# -- 1. one run per slide folder ----------------------------------------------------------------

@pytest.mark.slow
def test_two_concurrent_runs_into_one_folder_never_corrupt_it(tmp_path):
    out = tmp_path / "out"
    runs = [subprocess.Popen(segment_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(), cwd=REPO) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 75], results
    refused = next(err for code, _, err in results if code == 75)
    assert "is in use by another promptnucseg run (pid" in refused and "--wait-for-lock" in refused, refused
    winner = next(err for code, _, err in results if code == 0)
    assert re.search(r"plan: .* tiles of 256 px .* tissue .* mm² .* estimated", winner), winner
    assert_complete(out / "cmu_small_region")


@pytest.mark.slow
def test_a_waiting_run_queues_behind_a_live_lock_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    folder = out / "cmu_small_region"
    folder.mkdir(parents=True)
    held = FolderLock(folder).acquire()  # a live run: this test process
    started = time.monotonic()
    refused = subprocess.run(segment_cmd(out), capture_output=True, text=True, env=run_env(), cwd=REPO)
    refuse_s = time.monotonic() - started
    assert refused.returncode == 75 and f"pid {os.getpid()}" in refused.stderr, refused.stderr
    assert refuse_s < 20, refuse_s  # refused before the model loads (the measured figure is in the closing note)
    waiter = subprocess.Popen(segment_cmd(out, "--wait-for-lock"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=run_env(), cwd=REPO)
    line = waiter.stderr.readline()
    while "waiting for the run that holds it" not in line:
        assert line, "the waiting run ended without saying it waits"
        line = waiter.stderr.readline()
    time.sleep(1.0)
    assert waiter.poll() is None and journal_lines(folder) == 0  # it waits and touches nothing
    held.release()
    wait_for(lambda: journal_lines(folder) >= 2, what="the waiting run's first batches")
    waiter.kill()  # killed -9 while holding the lock: its lock file stays behind
    waiter.wait()
    stale = LockOwner.parse((folder / LOCK_NAME).read_bytes())
    assert stale is not None and stale.pid == waiter.pid
    resumed = subprocess.run(segment_cmd(out), capture_output=True, text=True, env=run_env(), cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of a run that is gone (pid {waiter.pid}" in resumed.stderr and "resuming" in resumed.stderr
    report = assert_complete(folder)
    assert report["resumed"] and report["tiles_this_run"] < report["tiles"]


# -- 4. interrupts ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_within_a_batch_keeps_the_journal_and_resumes(tmp_path, signum, status):
    out = tmp_path / "out"
    folder = out / "cmu_small_region"
    proc = subprocess.Popen(segment_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(), cwd=REPO)
    wait_for(lambda: journal_lines(folder) >= 2 or proc.poll() is not None, what="two journaled batches")
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    stop_s = time.monotonic() - sent
    assert proc.returncode == status, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"interrupted after (\d+)/(\d+) batches; run the same command again to resume", last)
    assert found, err
    done, total = int(found[1]), int(found[2])
    assert 2 <= done < total and journal_lines(folder) == done == len(list((folder / ".work" / "parts").glob("*.npz")))
    assert not (folder / LOCK_NAME).exists() and not (folder / "cmu_small_region_report.json").exists()
    assert stop_s < 30, stop_s  # one 256-px batch, then exit
    resumed = subprocess.run(segment_cmd(out), capture_output=True, text=True, env=run_env(), cwd=REPO)
    assert resumed.returncode == 0 and f"resuming, {done}/{total} batches already done" in resumed.stderr, resumed.stderr
    report = assert_complete(folder)
    assert report["tiles_this_run"] == report["tiles"] - done


# -- 5. disk space --------------------------------------------------------------------------------

def test_too_little_free_space_is_refused_before_work(tmp_path, predictor, monkeypatch):
    from promptnucseg.wsi_pipeline import preflight

    usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 500, 500))
    settings = SegmentSettings(tile_size=256, overlap=64, progress=False, roi=(600, 900, 300, 300))
    with pytest.raises(PipelineInputError) as err:
        segment_slide(sample_slide_or_skip(), tmp_path, predictor, settings, log=lambda m: None)
    message = str(err.value)
    assert "500 B free" in message and "need about" in message and str(tmp_path / "cmu_small_region") in message and "Fix:" in message
    assert not (tmp_path / "cmu_small_region" / ".work").exists()


def test_a_disk_that_fills_mid_run_is_named_and_the_run_resumes(tmp_path, predictor, monkeypatch):
    """ENOSPC injected at the write layer (the part writer) after two batches."""
    from promptnucseg.wsi_pipeline import nuclei, stitch

    real_save = nuclei.save_part
    saved = []

    def filling(path, nuclei):
        if len(saved) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(path)
        return real_save(path, nuclei)

    monkeypatch.setattr(stitch, "save_part", filling)
    settings = SegmentSettings(tile_size=256, overlap=64, batch_size=1, workers=1, progress=False, roi=(600, 900, 400, 400))
    folder = tmp_path / "cmu_small_region"
    with pytest.raises(PipelineInputError) as err:
        segment_slide(sample_slide_or_skip(), tmp_path, predictor, settings, log=lambda m: None)
    message = str(err.value)
    assert str(folder) in message and "filled up" in message and "run the same command again" in message
    assert journal_lines(folder) == 2 and not (folder / LOCK_NAME).exists()
    monkeypatch.setattr(stitch, "save_part", real_save)  # space freed
    logs: list[str] = []
    report = segment_slide(sample_slide_or_skip(), tmp_path, predictor, settings, log=logs.append)
    assert report["resumed"] and any("resuming, 2/" in m for m in logs)
    assert_complete(folder)


@pytest.mark.slow
def test_a_real_full_disk_is_refused_up_front_or_named_mid_run_and_resumes(tmp_path):
    """A real tmpfs in a user+mount namespace: too small at the start, then filled mid-run."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace to mount a small tmpfs here")
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    cmd = " ".join(f"'{c}'" for c in segment_cmd(disk / "out"))
    script = f"""
set -u
mount -t tmpfs -o size=300k tmpfs {disk} || exit 90
{cmd} > {keep}/err1 2>&1; echo $? > {keep}/rc1
mount -o remount,size=8m {disk}
{cmd} > {keep}/err2 2>&1 &
pid=$!
while [ ! -f {disk}/out/cmu_small_region/.work/progress.jsonl ] || [ $(wc -l < {disk}/out/cmu_small_region/.work/progress.jsonl) -lt 2 ]; do sleep 0.1; done
dd if=/dev/zero of={disk}/filler bs=64k 2>/dev/null
wait $pid; echo $? > {keep}/rc2
cp -a {disk}/out {keep}/after_full
rm {disk}/filler
{cmd} > {keep}/err3 2>&1; echo $? > {keep}/rc3
cp -a {disk}/out {keep}/after_resume
"""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=run_env(), cwd=REPO, timeout=900)
    if done.returncode == 90:
        pytest.skip("tmpfs cannot be mounted in a user namespace here")
    rc = [int((keep / f"rc{i}").read_text()) for i in (1, 2, 3)]
    err = [(keep / f"err{i}").read_text() for i in (1, 2, 3)]
    assert rc[0] == 1 and "free, but this slide's outputs need about" in err[0] and "Fix:" in err[0], err[0]
    assert rc[1] == 1 and "filled up while writing" in err[1] and "No space left on device" in err[1] and "Traceback" not in err[1], err[1]
    full = keep / "after_full" / "cmu_small_region"
    assert journal_lines(full) >= 2 and not (full / "cmu_small_region_report.json").exists() and not (full / LOCK_NAME).exists()
    assert rc[2] == 0 and "resuming" in err[2], err[2]
    assert_complete(keep / "after_resume" / "cmu_small_region")


def test_the_plan_line_says_what_is_true_for_one_tile_and_for_a_region():
    from promptnucseg.models.interface import ModelFacts, Palette
    from promptnucseg.wsi_pipeline.plan import plan_slide
    from promptnucseg.wsi_pipeline.preflight import plan_summary

    facts = ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True)  # the bundled model's

    kidney = SHARED_DATA / "slides" / "kidney-48-5.tif"
    if not kidney.is_file():
        pytest.skip("needs the kidney slide of the shared data (../shared/data/slides)")
    with open_slide(kidney) as reader:  # told 0.25 um/px: nothing to resample; one tile holds the biopsy
        plan = plan_slide(reader, SegmentSettings(mpp=0.25, progress=False), facts)
    line = plan_summary(plan, len(plan.tiles), len(plan.batches), "cpu")
    assert "not resampled (already the model's 0.25 um/px)" in line and "1/1.00" not in line
    assert "1 tile of 1024 px in 1 batch (1 to run)" in line and "0.00 mm²" not in line
    assert re.search(r"tissue 0\.000\d+ mm² \(0\.\d% of the slide\)", line), line
    with open_slide(sample_slide_or_skip()) as reader:  # 0.499 um/px; the slide is 39% tissue, this region 71%
        plan = plan_slide(reader, SegmentSettings(roi=(600, 1200, 800, 800), progress=False), facts)
    line = plan_summary(plan, len(plan.tiles), len(plan.batches), "cpu")
    assert "resampled x2.00 up to the model's 0.25 um/px" in line
    share = plan.tissue_mm2 / (800 * 800 * 0.499**2 / 1e6)
    assert f"({share:.0%} of the region)" in line and "of the slide" not in line and abs(share - plan.tissue_fraction) > 0.1, line
