"""`promptnucseg segment --scheduler ADDRESS | --cluster local:N`: the same run on dask workers.

Three parts: `worker` (what a dask worker runs), `cluster` (connecting to or starting the
cluster), `client` (planning, submitting and finishing slides here).

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

from .client import run_distributed, segment_distributed, split_ranges
from .cluster import check_scheduler_address, dask_client, parse_cluster, worker_layout
from ..model_spec import ModelSpec
from .worker import RangeResult, WorkerLayout, worker_device, worker_index

__all__ = [
    "ModelSpec", "RangeResult", "WorkerLayout", "check_scheduler_address", "dask_client", "parse_cluster", "run_distributed",
    "segment_distributed", "split_ranges", "worker_device", "worker_index", "worker_layout",
]
