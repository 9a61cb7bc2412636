"""The client's side of a distributed run: plan and journal each slide here, split its
pending batches into ranges, submit them, resubmit what is missing, and finish each slide
from its parts exactly as a single-process run does."""
from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tqdm import tqdm

from promptnucseg.models.interface import ModelFacts
from ..errors import PipelineInputError
from ..interrupts import Interrupted
from ..journal import Journal
from ..locking import FolderLock
from ..plan import SegmentSettings, SlidePlan
from ..segment import SlideJob, SlideResult, describe_failure, failed_result, finish_slide, lock_slide_folder, prepare_slide
from ..slides import open_slide
from .cluster import dask_client, load_model_facts, worker_layout
from ..model_spec import ModelSpec
from .worker import RangeResult, WorkerLayout, run_range_task

if TYPE_CHECKING:
    from distributed import Client, Future

RANGES_PER_WORKER = 3  # enough to balance uneven tiles, few enough that each task is long
TASK_RETRIES = 2  # re-runs of a range that raised (a dead worker's tasks are re-run anyway)
MAX_ROUNDS = 3  # resubmissions of batches still missing from a slide's journal
POLL_S = 1.0  # progress refresh while waiting on tasks


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
    windows: list[int] | None = None  # the model's windows and those skipped for no tissue, when it counts them
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
        if getattr(r, "windows", None) is not None:
            state.windows = [a + b for a, b in zip(state.windows or [0, 0], (r.windows, r.windows_skipped))]
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
                    **({
                        "windows_this_run": state.windows[0], "windows_skipped_no_tissue_this_run": state.windows[1],
                    } if state.windows else {}),
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
