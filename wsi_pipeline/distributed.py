"""`promptnucseg segment --scheduler ADDRESS | --cluster local:N`: the same run on dask workers.

The client plans every slide and opens its journal exactly as a single-process run does
(`segment.prepare_slide`), splits the slide's unfinished batches into a few contiguous
ranges per worker and submits one task per range; slides and the ranges of one big slide
spread over all workers. A task opens the slide itself, takes the worker's cached
predictor and runs `runner.run_batches` into the slide's own output folder, which journals
each finished batch as a part file. When a slide's ranges are all in, the client writes
its outputs from the parts in batch order (`segment.finish_slide`), so they are the very
bytes a single-process run writes; slides finish, and fail, independently.

A task is idempotent: `run_batches` skips journaled batches. When a worker dies, dask runs
its unfinished tasks again elsewhere and they redo only the batches that were in flight.

Assumptions: every worker sees the slides, the weights and `--out` at the same absolute
paths (one machine, or a shared file system), and has promptnucseg installed. A worker
with CUDA is pinned to `cuda:{worker index % GPU count}` (the index is the worker's name
for `--cluster` and `dask worker --nworkers N --name gpu`: gpu-0, gpu-1, ...), so start one
worker per GPU. CPU workers share the host's cores: torch gets cores / workers-on-the-host
threads in each. On CPU torch's last float bits depend on that thread count, so a run
compares byte for byte with a single-process run that used as many threads (the report's
`dask.workers` says how many); on GPU the kernels are the same either way.
"""
from __future__ import annotations

import os
import pickle
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from tqdm import tqdm

from promptnucseg.models.interface import NucleusPredictor
from .errors import PipelineInputError
from .interrupts import Interrupted
from .journal import Journal
from .locking import FolderLock
from .preflight import disk_full_explained
from .plan import SegmentSettings, SlidePlan
from .runner import peak_rss_mb, run_batches
from .segment import ModelFacts, SlideJob, SlideResult, describe_failure, failed_result, finish_slide, lock_slide_folder, prepare_slide
from .slides import open_slide

if TYPE_CHECKING:
    from distributed import Client, Future

RANGES_PER_WORKER = 3  # enough to balance uneven tiles, few enough that each task is long
TASK_RETRIES = 2  # re-runs of a range that raised (a dead worker's tasks are re-run anyway)
MAX_ROUNDS = 3  # resubmissions of batches still missing from a slide's journal
CONNECT_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 60.0
POLL_S = 1.0  # progress refresh while waiting on tasks
CORES_PER_CPU_WORKER = 4  # `--cluster local` without GPU
DEFAULT_SCHEDULER_PORT = 8786
FIX_ADDRESS = "start one with `dask scheduler` (plus `dask worker ADDRESS` on each machine) and pass the address it prints, or use --cluster local:N"


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its predictor; picklable and hashable (the worker cache key)."""

    weights: str | None = None  # None: the bundled model
    prompter_weights: str | None = None
    device: str = "auto"  # auto | cpu | cuda; a worker with CUDA picks its own GPU
    batch_size: int = 8
    expected_sha256: str | None = None  # weights every worker must load (set from the first load)
    preset: str | None = None  # the PromptNucSeg release's settings to run with (models/release.py)
    tta: bool = False  # test-time augmentation

    def absolute(self) -> "ModelSpec":
        """Workers may run elsewhere, in another folder: give them absolute paths."""
        resolve = lambda p: None if p is None else str(Path(p).expanduser().absolute())  # noqa: E731
        return replace(self, weights=resolve(self.weights), prompter_weights=resolve(self.prompter_weights))


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

    from promptnucseg.models.interface import load_predictor

    key = (spec.weights, spec.prompter_weights, spec.device, spec.batch_size, spec.preset, spec.tta)
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
            predictor = _PREDICTOR[key] = load_predictor(spec.weights, device=device, prompter_weights=spec.prompter_weights, batch_size=spec.batch_size, preset=spec.preset, tta=spec.tta)
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

def split_ranges(pending: Sequence[int], parts: int) -> list[list[int]]:
    """`pending` in at most `parts` contiguous, near-equal, non-empty runs, in order."""
    pending = list(pending)
    parts = max(1, min(parts, len(pending)))
    size, extra = divmod(len(pending), parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (1 if k < extra else 0)
        if stop > start:
            out.append(pending[start:stop])
        start = stop
    return out


def _plan_for(plan: SlidePlan, batches: Sequence[int]) -> SlidePlan:
    """The plan with only these batches' tiles: a task carries its share, not the slide's."""
    keep = set(batches)
    return replace(plan, tiles=[], batches=[tiles if b in keep else [] for b, tiles in enumerate(plan.batches)])


def parse_cluster(value: str, device: str = "auto") -> int:
    """Worker count of `local:N`; bare `local` means one per GPU, or one per 4 cores on CPU."""
    match = re.fullmatch(r"local(?::(\d+))?", value.strip())
    if not match or (match.group(1) is not None and int(match.group(1)) < 1):
        raise PipelineInputError(None, f"--cluster {value!r} is not understood", "use --cluster local:N with N >= 1 worker processes (or --cluster local), or --scheduler ADDRESS")
    if match.group(1) is not None:
        return int(match.group(1))
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // CORES_PER_CPU_WORKER)


def check_scheduler_address(address: str, timeout: float = 5.0) -> str:
    """The address with its scheme; refuses at once (one line with a Fix) what cannot work."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address.strip())
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location, default_port=DEFAULT_SCHEDULER_PORT)
    except (ValueError, TypeError) as err:
        raise PipelineInputError(None, f"--scheduler {address!r} is not a scheduler address ({err})", f"pass it as tcp://HOST:PORT; {FIX_ADDRESS}") from None
    if scheme not in ("tcp", "tls"):
        return f"{scheme}://{location}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise PipelineInputError(None, f"cannot reach the dask scheduler at {address} ({err.strerror or err})", FIX_ADDRESS) from None
    return f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}"


@contextmanager
def dask_client(scheduler: str | None = None, cluster: str | None = None, device: str = "auto") -> Iterator["Client"]:
    """A client of the scheduler at `scheduler`, or of a LocalCluster started for `cluster`."""
    from distributed import Client, LocalCluster

    if scheduler:
        address = check_scheduler_address(scheduler)
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            raise PipelineInputError(None, f"cannot connect to the dask scheduler at {scheduler} ({err})", FIX_ADDRESS) from None
        with client:
            try:
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except TimeoutError:
                raise PipelineInputError(None, f"the dask scheduler at {scheduler} has no workers", f"start workers with `dask worker {address}` on machines that see the slides and --out") from None
            yield client
        return
    n = parse_cluster(cluster or "local", device)
    # No dashboard; the scheduler's bare HTTP endpoint (/health) takes a free loopback port, not 8787.
    local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    with local, Client(local) as client:
        client.wait_for_workers(n, timeout=WORKERS_TIMEOUT_S)
        yield client


def worker_layout(client: "Client") -> WorkerLayout:
    from distributed.comm import get_address_host

    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025 has no n_workers (and returns them all)
        workers = client.scheduler_info()["workers"]
    addresses = tuple(sorted(workers))
    per_host = Counter(get_address_host(a) for a in addresses)
    return WorkerLayout(addresses, tuple(sorted(per_host.items())))


def load_model_facts(client: "Client", spec: ModelSpec, layout: WorkerLayout) -> tuple[ModelFacts, ModelSpec]:
    """Load the model on one worker: its facts for planning and reports, and the spec every
    other worker must match (same weights hash)."""
    facts = client.submit(model_facts_task, spec, layout, pure=False, key=f"promptnucseg-model-{uuid.uuid4().hex[:8]}").result()
    if isinstance(facts, str):
        raise PipelineInputError(None, facts.split(". Fix: ")[0], facts.split(". Fix: ", 1)[1] if ". Fix: " in facts else "see the message")
    return facts, replace(spec, expected_sha256=facts.describe().get("weights_sha256"))


@dataclass
class _Slide:
    order: int
    given: str  # the slide as the user named it (results and messages)
    path: Path
    job: SlideJob
    futures: set = field(default_factory=set)
    rounds: int = 0
    tiles: int = 0
    nuclei: int = 0
    first_start: float | None = None
    last_end: float | None = None
    peak_rss_mb: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # address -> device, torch threads
    tiles_done: int = 0  # for the progress bar
    lock: FolderLock | None = None  # the client holds the slide's folder until the slide is done


class _DistributedRun:
    """The client's bookkeeping: which tasks belong to which slide, and what is finished."""

    def __init__(self, client: "Client", spec: ModelSpec, layout: WorkerLayout, model: ModelFacts, settings: SegmentSettings, out_root: Path,
                 log: Callable[[str], None], on_result: Callable[[SlideResult], None] | None, ranges_per_worker: int) -> None:
        self.client, self.spec, self.layout, self.model, self.settings = client, spec, layout, model, settings
        self.out_root, self.log, self.on_result = out_root, log, on_result
        self.ranges = max(1, ranges_per_worker * len(layout.addresses))
        self.owner: dict["Future", _Slide] = {}
        self.slides: dict[int, _Slide] = {}
        self.results: dict[int, SlideResult] = {}
        self.bar = tqdm(total=0, desc="slides on dask", unit="tile", disable=not settings.progress, dynamic_ncols=True)

    def add(self, order: int, given: str | Path) -> None:
        """Plan the slide on the client and submit its unfinished batches."""
        path = Path(given).expanduser().absolute()  # workers run elsewhere; symlinks keep their name
        lock = None
        try:
            lock = lock_slide_folder(self.out_root, path, self.settings, self.log)
            with open_slide(path) as reader:
                job = prepare_slide(reader, self.out_root, self.model, self.settings, self.log)
        except Exception as err:
            if lock is not None:
                lock.release()
            self._done(order, failed_result(given, err))
            return
        if job.finished_report is not None:
            lock.release()
            self._done(order, SlideResult(str(given), True, job.finished_report))
            return
        state = self.slides[order] = _Slide(order, str(given), path, job, tiles_done=job.tiles_done(), lock=lock)
        self.bar.total += len(job.plan.tiles)
        self.bar.update(state.tiles_done)
        self._submit_or_finish(state)

    def _submit_or_finish(self, state: _Slide) -> None:
        pending = state.job.pending()
        if not pending:
            self._finish(state)
            return
        if state.rounds >= MAX_ROUNDS:
            self._fail(state, RuntimeError(f"{len(pending)} batches still unfinished after {MAX_ROUNDS} rounds of tasks"))
            return
        state.rounds += 1
        tag = uuid.uuid4().hex[:8]
        for part in split_ranges(pending, self.ranges):
            fut = self.client.submit(
                run_range_task, _plan_for(state.job.plan, part), str(state.job.folder), part, self.spec, self.layout, self.settings,
                key=f"promptnucseg-{state.job.plan.stem}-{part[0]}-{part[-1]}-{tag}", retries=TASK_RETRIES, priority=-state.order, pure=False,
            )
            state.futures.add(fut)
            self.owner[fut] = state

    def busy(self) -> bool:
        return bool(self.owner)

    def poll(self, timeout: float) -> None:
        """Collect finished tasks (waiting up to `timeout`), then refresh the progress bar."""
        from distributed import wait

        if self.owner:
            try:
                wait(list(self.owner), timeout=timeout, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        for fut in [f for f in self.owner if f.done()]:
            self._collect(fut)
        self._progress()

    def _collect(self, fut: "Future") -> None:
        state = self.owner.pop(fut)
        state.futures.discard(fut)
        if state.order in self.results:  # the slide already failed
            return
        if fut.status != "finished":
            self._fail(state, fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.key} was {fut.status}"))
            return
        r: RangeResult = fut.result()
        if r.input_error is not None:
            self._fail(state, PipelineInputError(*r.input_error))
            return
        state.tiles += r.tiles
        state.nuclei += r.nuclei
        state.first_start = min(state.first_start or r.started, r.started)
        state.last_end = max(state.last_end or r.ended, r.ended)
        state.peak_rss_mb = max(state.peak_rss_mb, r.peak_rss_mb)
        state.workers[r.worker] = {"device": r.device, "torch_threads": r.torch_threads}
        if not state.futures:
            self._submit_or_finish(state)

    def _finish(self, state: _Slide) -> None:
        span = (state.last_end - state.first_start) if state.first_start is not None and state.last_end is not None else 0.0
        records = _journal_records(state.job.journal)
        try:
            report = finish_slide(
                state.job, self.model, self.settings,
                {
                    "tiles_this_run": state.tiles,
                    "tiles_per_second": round(state.tiles / span, 3) if span > 0 else None,
                    "nuclei_per_second": round(state.nuclei / span, 3) if span > 0 else None,
                    "peak_rss_mb": state.peak_rss_mb,  # the largest worker process
                    "dask": {"workers": dict(sorted(state.workers.items())), "task_rounds": state.rounds, "batches_rerun": max(0, records - len(state.job.plan.batches))},
                },
            )
        except Exception as err:
            self._fail(state, err)
            return
        self._set_tiles_done(state, len(state.job.plan.tiles))
        self._done(state.order, SlideResult(state.given, True, report))

    def _fail(self, state: _Slide, err: BaseException) -> None:
        """Stop the slide's other tasks; its journal stays, so a rerun resumes it."""
        for fut in list(state.futures):
            self.owner.pop(fut, None)
            fut.cancel()
        state.futures.clear()
        self._done(state.order, SlideResult(state.given, False, {}, describe_failure(state.given, err)))

    def _done(self, order: int, result: SlideResult) -> None:
        self.results[order] = result
        state = self.slides.get(order)
        if state is not None and state.lock is not None:
            state.lock.release()
        if self.on_result is not None:
            self.bar.clear()
            self.on_result(result)
            self.bar.refresh()

    def _progress(self) -> None:
        for state in self.slides.values():
            if state.futures:
                self._set_tiles_done(state, state.job.tiles_done())

    def _set_tiles_done(self, state: _Slide, tiles: int) -> None:
        if tiles > state.tiles_done:
            self.bar.update(tiles - state.tiles_done)
            state.tiles_done = tiles

    def progress(self) -> tuple[int, int]:
        """(batches journaled, batches planned) over the slides not finished yet."""
        open_slides = [s for o, s in self.slides.items() if o not in self.results]
        return sum(len(s.job.journal.done()) for s in open_slides), sum(len(s.job.plan.batches) for s in open_slides)

    def close(self) -> None:
        for state in self.slides.values():
            if state.lock is not None:
                state.lock.release()
        self.bar.close()


def _journal_records(journal: Journal) -> int:
    """Lines in the slide's progress log: more than its batches means some ran twice."""
    try:
        with open(journal.progress_path) as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def segment_distributed(
    client: "Client",
    slides: Sequence[str | Path],
    out_root: str | Path,
    spec: ModelSpec,
    settings: SegmentSettings,
    on_result: Callable[[SlideResult], None] | None = None,
    log: Callable[[str], None] = print,
    ranges_per_worker: int = RANGES_PER_WORKER,
) -> list[SlideResult]:
    """Segment `slides` on the client's workers; one result per slide, in input order.

    A bad model raises (nothing can run); a bad slide only fails itself. `on_result` hears
    of each slide as soon as it is finished or failed.
    """
    spec = spec.absolute()
    layout = worker_layout(client)
    model, spec = load_model_facts(client, spec, layout)
    run = _DistributedRun(client, spec, layout, model, settings, Path(out_root).expanduser().absolute(), log, on_result, ranges_per_worker)
    try:
        for order, slide in enumerate(slides):
            run.add(order, slide)
            run.poll(timeout=0)  # finish early slides while later ones are planned
        while run.busy():
            run.poll(timeout=POLL_S)
    except Interrupted as stop:
        stop.progress = run.progress() if run.slides else None
        raise
    finally:
        for fut in list(run.owner):
            fut.cancel()
        run.close()
    return [run.results[k] for k in sorted(run.results)]


def run_distributed(
    slides: Sequence[str | Path],
    out_root: str | Path,
    settings: SegmentSettings,
    spec: ModelSpec,
    scheduler: str | None = None,
    cluster: str | None = None,
    on_result: Callable[[SlideResult], None] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> list[SlideResult]:
    """The CLI's entry: connect (or start a local cluster), run, shut a local cluster down."""
    if spec.device not in ("auto", "cpu", "cuda"):
        raise PipelineInputError(None, f"--device {spec.device} would put every dask worker on one device", "use --device auto (each worker with CUDA takes its own GPU), cuda or cpu")
    with dask_client(scheduler, cluster, spec.device) as client:
        return segment_distributed(client, slides, out_root, spec, settings, on_result=on_result, log=log)
