"""What a benchmark figure needs beside the stopwatch: the machine it came from, the memory a
stage really used, and how busy the GPU was while it ran.

Peak RSS of a *stage* (not of the whole process, which `ru_maxrss` gives and never lowers):
Linux lets a process reset its own high-water mark (`echo 5 > /proc/self/clear_refs`), so
`StagePeak` resets it, runs the stage and reads `VmHWM`; where that is refused it samples
`VmRSS` from a thread instead. GPU busy fraction: NVML's utilisation (the share of time a
kernel was running), polled through `pynvml` when installed, else streamed by `nvidia-smi`.
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _status_kb(field_name: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.M)
    return float(match.group(1)) if match else None


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next stage starts from what
    is really in use (glibc keeps freed small blocks otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class StagePeak:
    """`with StagePeak() as m: ...` -> m.start_mb (RSS before), m.peak_mb (highest RSS during),
    m.growth_mb (peak - start), m.method ("VmHWM reset" or "VmRSS sampled every 5 ms")."""

    start_mb: float | None = None
    peak_mb: float | None = None
    method: str = ""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def growth_mb(self) -> float | None:
        if self.start_mb is None or self.peak_mb is None:
            return None
        return max(0.0, self.peak_mb - self.start_mb)

    def __enter__(self) -> "StagePeak":
        release_free_memory()
        self.start_mb = current_rss_mb()
        if _reset_high_water_mark():
            self.method = "VmHWM reset"
        else:
            self.method = "VmRSS sampled every 5 ms"
            self.peak_mb = self.start_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = current_rss_mb()
            if rss is not None and (self.peak_mb is None or rss > self.peak_mb):
                self.peak_mb = rss

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = current_rss_mb()
            if rss is not None and (self.peak_mb is None or rss > self.peak_mb):
                self.peak_mb = rss
        else:
            kb = _status_kb("VmHWM")
            self.peak_mb = None if kb is None else kb / 1024


class GpuBusy:
    """`with GpuBusy(device) as g: ...` -> g.fraction (0..1, mean NVML utilisation while the
    block ran), g.samples, g.source; fraction None (with g.source saying why) when no GPU or no
    way to ask NVML. NVML averages over its own sample period (1/6 to 1 s), so blocks much
    shorter than a second get a coarse figure."""

    def __init__(self, device: str, interval_s: float = 0.05) -> None:
        self.device = device
        self.interval_s = interval_s
        self.fraction: float | None = None
        self.samples = 0
        self.source = "not a CUDA device"
        self._values: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "GpuBusy":
        if not self.device.startswith("cuda"):
            return self
        uuid, index = _cuda_identity(self.device)
        handle = _nvml_handle(uuid, index)
        if handle is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll_nvml, args=(handle,), daemon=True)
            self._thread.start()
        elif shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            target = uuid or str(index)
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", target, "-lms", str(max(50, int(self.interval_s * 1000)))]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
            self._thread.start()
        else:
            self.source = "unavailable: neither pynvml nor nvidia-smi"
        return self

    def _poll_nvml(self, handle: Any) -> None:
        import pynvml

        while not self._stop.wait(self.interval_s):
            self._values.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._values.append(float(line.strip()))
            except ValueError:
                continue

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.samples = len(self._values)
        if self._values:
            self.fraction = sum(self._values) / len(self._values) / 100.0
        elif self.device.startswith("cuda") and not self.source.startswith("unavailable"):
            self.source += " (no sample: block too short)"


def _cuda_identity(device: str) -> tuple[str | None, int]:
    import torch

    index = torch.device(device).index or 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        uuid = str(uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and uuid is None:  # torch's index is into the visible list, nvidia-smi's is not
        ids = [v.strip() for v in visible.split(",")]
        if index < len(ids) and ids[index].isdigit():
            index = int(ids[index])
    return uuid, index


def _nvml_handle(uuid: str | None, index: int) -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # pynvml absent, or NVML refuses: fall back to nvidia-smi
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return round(int(match.group(1)) / 1024**2, 1) if match else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_facts(device: str) -> dict[str, Any]:
    """The machine and software a run's figures belong to (JSON-ready)."""
    import torch

    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": _ram_gb(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "nice": os.nice(0),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": _cpu_model(),
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        facts.update({
            "device_name": torch.cuda.get_device_name(index),
            "gpu_memory_gb": round(props.total_memory / 1024**3, 1),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        })
    return facts


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
