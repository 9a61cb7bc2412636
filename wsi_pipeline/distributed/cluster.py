"""The connection to a cluster: `--cluster local[:N]` started here or `--scheduler ADDRESS`
checked before use, the workers' layout, and the model's facts fetched from a worker."""
from __future__ import annotations

import os
import re
import socket
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from promptnucseg.models.interface import ModelFacts
from ..errors import PipelineInputError
from ..model_spec import ModelSpec
from .worker import WorkerLayout, model_facts_task

if TYPE_CHECKING:
    from distributed import Client

CONNECT_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 60.0
CORES_PER_CPU_WORKER = 4  # `--cluster local` without GPU
DEFAULT_SCHEDULER_PORT = 8786
FIX_ADDRESS = "start one with `dask scheduler` (plus `dask worker ADDRESS` on each machine) and pass the address it prints, or use --cluster local:N"


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
