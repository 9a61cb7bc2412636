"""`promptnucseg segment` on a real dask LocalCluster (2 worker processes on loopback).

The distributed run must write what a single-process run writes, byte for byte, even when
a worker is SIGKILLed mid-run. Real model (the bundled one, copied so that a re-export
during training cannot change it between the two runs), real H&E crops from
../shared/data, real worker processes.

On CPU torch's float results depend on its intra-op thread count, so the single-process
reference runs with the thread count the workers report using.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.wsi_pipeline.distributed import WorkerLayout, dask_client, split_ranges, worker_index
from conftest import HE_CELLS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two real H&E crops at 0.25 um/px (6 and 4 tiles of 256 px), a copy of the model, and a
    file that is no slide."""
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    root = tmp_path_factory.mktemp("dist_inputs")
    weights = root / "model.pt"
    shutil.copyfile(BUNDLED_WEIGHTS, weights)
    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))  # the suite's own real H&E image
    Image.fromarray(rgb[200:520, 64:576]).save(root / "crop_a.png")
    Image.fromarray(rgb[600:920, 300:620]).save(root / "crop_b.png")
    (root / "notes.svs").write_text("this is not a slide")
    return {"a": root / "crop_a.png", "b": root / "crop_b.png", "bad": root / "notes.svs", "weights": weights}


def _args(inputs: dict[str, Path], out: Path, *slides: Path) -> list[str]:
    return [
        "segment", *map(str, slides), "--out", str(out), "--mpp", "0.25", "--tile-size", "256", "--overlap", "64",
        "--batch-size", "1", "--workers", "1", "--device", "cpu", "--no-progress", "--weights", str(inputs["weights"]),
    ]


def _assert_same_outputs(ref: Path, got: Path, stem: str) -> None:
    a, b = ref / stem, got / stem
    assert (a / f"{stem}.geojson").read_bytes() == (b / f"{stem}.geojson").read_bytes()
    assert json.loads((a / f"{stem}.geojson").read_text())["features"]
    za, zb = zarr.open_group(str(a / f"{stem}.zarr"), mode="r"), zarr.open_group(str(b / f"{stem}.zarr"), mode="r")
    names = sorted(name for name, _ in za.arrays()) + sorted(f"measurements/{n}" for n, _ in za["measurements"].arrays())
    assert names == sorted(name for name, _ in zb.arrays()) + sorted(f"measurements/{n}" for n, _ in zb["measurements"].arrays())
    assert "polygon_coords" in names and "measurements/area_um2" in names
    for name in names:
        np.testing.assert_array_equal(za[name][:], zb[name][:], err_msg=f"{stem}.zarr/{name}")
    assert pq.read_table(a / f"{stem}_nuclei.parquet").equals(pq.read_table(b / f"{stem}_nuclei.parquet"))


class WorkerKiller(threading.Thread):
    """SIGKILLs a worker that is running a range task, once `journal` shows finished batches."""

    def __init__(self, client, journal: Path, report: Path) -> None:
        super().__init__(daemon=True)
        self.client, self.journal, self.report = client, journal, report
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            lines = len(self.journal.read_text().splitlines()) if self.journal.is_file() else 0
            busy = [addr for addr, keys in self.client.processing().items() if any(str(k).startswith("promptnucseg-crop") for k in keys)]
            if lines >= 1 and busy:
                pids = self.client.run(os.getpid)
                self.killed = {"address": busy[0], "pid": pids[busy[0]], "batches_done": lines, "report_existed": self.report.exists()}
                os.kill(pids[busy[0]], signal.SIGKILL)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as local, Client(local) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def test_killed_worker_run_writes_what_one_process_writes(tmp_path, inputs, cluster, capsys):
    dist = tmp_path / "dist"
    killer = WorkerKiller(cluster, dist / "crop_a" / ".work" / "progress.jsonl", dist / "crop_a" / "crop_a_report.json")
    killer.start()
    code = main(_args(inputs, dist, inputs["a"], inputs["bad"], inputs["b"]) + ["--scheduler", cluster.scheduler.address])
    killer.stop.set()
    killer.join()
    out, err = capsys.readouterr()
    # the slide that is no slide fails alone, in one line; the others finish
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "notes.svs" in errors[0] and "Fix:" in errors[0], err
    assert sorted(json.loads(line)["slide"] for line in out.splitlines()) == [str(inputs["a"]), str(inputs["b"])]

    # a worker really died mid-run, and dask replaced it
    assert killer.killed is not None, "no worker was killed: the run finished before any batch was journaled?"
    assert not killer.killed["report_existed"] and killer.killed["batches_done"] < 6
    assert killer.killed["pid"] not in cluster.run(os.getpid).values()

    reports = {s: json.loads((dist / s / f"{s}_report.json").read_text()) for s in ("crop_a", "crop_b")}
    assert reports["crop_a"]["batches"] == 6 and reports["crop_b"]["batches"] == 4
    threads = set()
    for rep in reports.values():
        assert rep["status"] == "complete" and rep["dask"]["batches_rerun"] == 0  # no finished batch ran twice
        assert rep["dask"]["task_rounds"] == 1  # dask re-ran the dead worker's task; nothing was left missing
        threads |= {w["torch_threads"] for w in rep["dask"]["workers"].values()}
        assert {w["device"] for w in rep["dask"]["workers"].values()} == {"cpu"}
    assert not (dist / "crop_a" / ".work").exists()
    assert len(threads) == 1

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads.pop())
    try:
        ref = tmp_path / "single"
        assert main(_args(inputs, ref, inputs["a"], inputs["b"])) == 0
    finally:
        torch.set_num_threads(before)
    for stem in ("crop_a", "crop_b"):
        _assert_same_outputs(ref, dist, stem)


def test_local_cluster_is_loopback_one_thread_per_worker_no_dashboard():
    with dask_client(cluster="local:2") as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        assert all(w["nthreads"] == 1 and w["host"] == "127.0.0.1" for w in info["workers"].values())
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        http = info.get("services", {}).get("dashboard")  # dask's bare HTTP endpoint, not the dashboard
        if http is not None:
            assert http != 8787
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{http}/status", timeout=10)
        assert sorted(w["name"] for w in info["workers"].values()) == [0, 1]  # the GPU pinning index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--scheduler", f"tcp://127.0.0.1:{_free_port()}"], "cannot reach the dask scheduler"),
        (["--scheduler", "tcp://127.0.0.1:port"], "is not a scheduler address"),
        (["--cluster", "local:0"], "--cluster 'local:0' is not understood"),
        (["--cluster", "remote:4"], "--cluster 'remote:4' is not understood"),
        (["--cluster", "local:2", "--device", "cuda:1"], "--device cuda:1"),
    ],
)
def test_bad_cluster_options_give_one_line_with_a_fix(tmp_path, inputs, capsys, extra, words):
    started = time.monotonic()
    code = main(_args(inputs, tmp_path, inputs["a"]) + extra)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and words in lines[0] and "Fix:" in lines[0], err
    assert time.monotonic() - started < 15  # refused up front, not after a connect timeout


def test_scheduler_and_cluster_are_exclusive(tmp_path, inputs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_args(inputs, tmp_path, inputs["a"]) + ["--scheduler", "tcp://127.0.0.1:8786", "--cluster", "local:2"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_ranges_are_contiguous_cover_pending_and_balance():
    pending = [0, 1, 2, 5, 6, 7, 8, 9, 12, 13]  # a resumed slide: some batches done
    for parts in (1, 3, 4, 10, 50):
        ranges = split_ranges(pending, parts)
        assert [b for r in ranges for b in r] == pending and all(ranges)
        assert len(ranges) == min(parts, len(pending))
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    assert split_ranges([], 4) == []


def test_worker_index_follows_worker_names():
    layout = WorkerLayout(("tcp://10.0.0.1:4000", "tcp://10.0.0.2:4000"), (("10.0.0.1", 1), ("10.0.0.2", 1)))
    assert worker_index(3, "tcp://x:1", layout) == 3  # LocalCluster names its workers 0..N-1
    assert worker_index("gpu-1", "tcp://x:1", layout) == 1  # dask worker --nworkers N --name gpu
    assert worker_index("tcp://10.0.0.2:4000", "tcp://10.0.0.2:4000", layout) == 1  # unnamed: the address's rank
    assert worker_index("worker-b", "tcp://10.0.0.3:4000", layout) == 0  # a worker that joined later
