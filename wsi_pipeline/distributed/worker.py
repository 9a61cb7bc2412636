"""What runs on a dask worker: its predictor (loaded once, pinned to its GPU), the model's
facts, and one task = one range of a slide's batches run into the slide's own journal."""
from __future__ import annotations

import os
import pickle
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptnucseg.models.interface import ModelFacts, NucleusPredictor
from ..errors import PipelineInputError
from ..journal import Journal
from ..model_spec import ModelSpec
from ..preflight import disk_full_explained
from ..plan import SegmentSettings, SlidePlan
from ..runner import peak_rss_mb, run_batches
from ..slides import open_slide


@dataclass(frozen=True)
class WorkerLayout:
    """The workers when the run started: GPU index fallback and CPU threads per worker."""

    addresses: tuple[str, ...]
    workers_per_host: tuple[tuple[str, int], ...]

    def index_of(self, address: str) -> int:
        return self.addresses.index(address) if address in self.addresses else 0

    def sharing(self, host: str) -> int:
        return dict(self.workers_per_host).get(host, 1)


@dataclass
class RangeResult:
    """What one task reports back (a bad-input error travels as a value: no retry for it)."""

    batches: list[int]
    worker: str = ""
    device: str = ""
    torch_threads: int = 0
    tiles: int = 0
    nuclei: int = 0
    windows: int | None = None  # the model's windows on these tiles, when it counts them
    windows_skipped: int | None = None  # of those, left unrun for holding no tissue
    started: float = 0.0  # wall clock, seconds since the epoch
    ended: float = 0.0
    peak_rss_mb: float = 0.0
    input_error: tuple[str | None, str, str] | None = None  # PipelineInputError(path, problem, fix)


# -- worker side ---------------------------------------------------------------------------

_PREDICTOR: dict[tuple, NucleusPredictor] = {}  # one model per worker process
_PREDICTOR_LOCK = threading.Lock()
_RUN_LOCK = threading.Lock()  # one range at a time per process, whatever the worker's --nthreads


def worker_index(name: Any, address: str, layout: WorkerLayout) -> int:
    """0, 1, ... for workers named 0, 1, ... or gpu-0, gpu-1, ...; else the address's rank."""
    if isinstance(name, int):
        return name
    match = re.search(r"(?:^|-)(\d+)$", str(name))
    return int(match.group(1)) if match else layout.index_of(address)


def worker_device(requested: str, index: int) -> str:
    """cuda:{index % GPUs} on a worker with CUDA (unless cpu is asked for), else cpu."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    if requested == "auto":
        return "cpu"
    raise RuntimeError(f"--device {requested} asked for, but dask worker {socket.gethostname()} sees no CUDA GPU. Fix: use --device auto or cpu, or start workers on GPU machines")


def worker_predictor(spec: ModelSpec, layout: WorkerLayout) -> NucleusPredictor:
    """This worker process's predictor, loaded once and pinned to the worker's device."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    key = spec.key
    with _PREDICTOR_LOCK:
        predictor = _PREDICTOR.get(key)
        if predictor is None:
            import torch

            worker = get_worker()
            device = worker_device(spec.device, worker_index(worker.name, worker.address, layout))
            if device == "cpu":  # dask sets OMP_NUM_THREADS=1 in workers: share the cores instead
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
                torch.set_num_threads(max(1, cores // layout.sharing(get_address_host(worker.address))))
            else:
                torch.cuda.set_device(torch.device(device))
            _PREDICTOR.clear()  # another model's networks go before this one loads
            predictor = _PREDICTOR[key] = spec.load(device)
    sha = predictor.describe().get("weights_sha256")
    if spec.expected_sha256 and sha != spec.expected_sha256:
        raise PipelineInputError(
            spec.weights or "the bundled model", f"on worker {get_worker().address} holds other weights (sha256 {sha}) than the run started with ({spec.expected_sha256})",
            "give every worker the same weights file and leave it unchanged during the run; rerun to resume",
        )
    return predictor


def model_facts_task(spec: ModelSpec, layout: WorkerLayout) -> ModelFacts | str:
    """Load the model on a worker (it stays cached there); its facts, or the error message."""
    try:
        return ModelFacts.of(worker_predictor(spec, layout))
    except Exception as err:  # weights errors take (path, problem, fix): they do not unpickle
        return str(err) if isinstance(err, (PipelineInputError, ValueError, RuntimeError)) else f"{type(err).__name__}: {err}"


def run_range_task(plan: SlidePlan, folder: str, batches: list[int], spec: ModelSpec, layout: WorkerLayout, settings: SegmentSettings) -> RangeResult:
    """Run these batches of one slide on this worker; journaled batches are skipped."""
    from distributed import get_worker

    result = RangeResult(batches=list(batches), worker=get_worker().address, started=time.time())
    try:
        predictor = worker_predictor(spec, layout)
        result.device = predictor.device
        result.torch_threads = _torch_threads()
        with _RUN_LOCK, open_slide(plan.path, plan.slide_facts.get("backend", "auto"), settings.mpp) as reader, disk_full_explained(Path(folder)):
            stats = run_batches(reader, plan, batches, predictor, Journal(Path(folder)), settings)
    except PipelineInputError as err:  # bad input stays bad on a retry
        result.input_error = (err.path, err.problem, err.fix)
        return result
    except Exception as err:
        raise _portable(err)
    result.tiles, result.nuclei = stats.tiles, stats.nuclei
    if stats.windows_run is not None and stats.windows_skipped is not None:
        result.windows, result.windows_skipped = stats.windows_run + stats.windows_skipped, stats.windows_skipped
    result.ended = time.time()
    result.peak_rss_mb = round(peak_rss_mb(), 1)
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _portable(err: Exception) -> Exception:
    """The error itself when it survives pickling to the client, else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


# -- client side ---------------------------------------------------------------------------
