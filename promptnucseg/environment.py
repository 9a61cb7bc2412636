"""What the machine must allow before torch can load: checked before the first `import torch`,
so a limit is reported in one line naming the torch build, instead of an ImportError traceback,
a C++ `std::bad_alloc` abort or libgomp's "Thread creation failed".

Figures (torch 2.14.1+cu130, Linux x86-64, 2 cores): `import torch` maps 3.26 GB of address
space (VmPeak); a small `segment` run fails under `ulimit -v` 3.8 GiB (the CUDA libraries load,
then OpenMP cannot create its threads) and runs under 4.77 GiB. A CUDA/ROCm build is therefore
refused below `CUDA_BUILD_MIN_AS`; CPU builds map far less and are left to the import itself.
"""
from __future__ import annotations

import importlib.util
import re
import resource
from importlib import metadata
from pathlib import Path

CUDA_BUILD_MIN_AS = int(4.5 * 2**30)  # bytes of address space (ulimit -v) a CUDA build of torch needs to load and run
TORCH_COMMANDS = frozenset({"segment", "train-prompter", "train-segmentor", "export-model", "import-release", "evaluate"})
CPU_WHEELS = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def _version_file() -> dict[str, str]:
    """`torch/version.py`'s assignments (`__version__`, `cuda`, `hip`), read as text: no import."""
    try:
        spec = importlib.util.find_spec("torch")
        folder = Path(list(spec.submodule_search_locations or [])[0]) if spec else None
        text = (folder / "version.py").read_text() if folder else ""
    except (ImportError, OSError, IndexError, ValueError):
        return {}
    return dict(re.findall(r"^(__version__|cuda|hip)\b[^=]*=\s*'([^']*)'", text, re.M))


def torch_build() -> tuple[str, str]:
    """(version, 'CUDA 13.0 build' / 'ROCm 6.2 build' / 'CPU build' / 'unknown build') from torch's
    version file or its distribution's metadata, without importing torch."""
    found = _version_file()
    if found.get("cuda"):
        return found.get("__version__", "?"), f"CUDA {found['cuda']} build"
    if found.get("hip"):
        return found.get("__version__", "?"), f"ROCm {found['hip']} build"
    if found.get("__version__"):
        return found["__version__"], "CPU build"
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed", "no build"
    local = version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit():
        digits = local[2:]
        return version, f"CUDA {digits[:-1]}.{digits[-1]} build"
    if local.startswith("rocm"):
        return version, "ROCm build"
    if local == "cpu":
        return version, "CPU build"
    try:  # Linux wheels from PyPI without a local label bundle CUDA when nvidia-* libraries came with them
        requires = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        requires = []
    return version, "CUDA build" if any(r.startswith("nvidia-") for r in requires) else "unknown build"


def address_space_refusal(command: str | None) -> str | None:
    """The one-line refusal (without 'error: ') when `command` needs torch and the address-space
    limit (ulimit -v, RLIMIT_AS) is too small for the installed CUDA build; None when it may run."""
    if command not in TORCH_COMMANDS:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft >= CUDA_BUILD_MIN_AS:
        return None
    version, build = torch_build()
    if not build.startswith(("CUDA", "ROCm")):
        return None
    return (
        f"torch {version} ({build}) cannot load under this process's address-space limit of {soft / 2**30:.1f} GiB "
        f"(ulimit -v / RLIMIT_AS): its GPU libraries alone map about 3.3 GB and a run needs about {CUDA_BUILD_MIN_AS / 2**30:.1f} GiB. "
        f"Fix: raise the limit (ulimit -v unlimited, or a larger vmem request to the scheduler), or install the CPU build of torch ({CPU_WHEELS})"
    )


def torch_import_problem(err: ImportError) -> str | None:
    """A one-line explanation (without 'error: ') of an ImportError raised while loading torch;
    None when the error is not torch's."""
    text = f"{err} {getattr(err, 'name', '') or ''}"
    if "torch" not in text and "libc10" not in text and "libcu" not in text and "libnv" not in text:
        return None
    version, build = torch_build()
    first = (str(err).splitlines() or ["no detail"])[0][:200]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if "failed to map segment" in first or "cannot allocate memory" in first.lower():
        why = "the process may not map that much memory" + (f" (address-space limit {soft / 2**30:.1f} GiB, ulimit -v)" if soft != resource.RLIM_INFINITY else "")
        fix = f"raise the memory or address-space limit (ulimit -v), or install the CPU build of torch ({CPU_WHEELS})"
    elif "undefined symbol" in first or "version" in first.lower():
        why = "its libraries do not match each other or this system"
        fix = "reinstall torch in a fresh virtual environment (pip install --force-reinstall torch) so that torch and its nvidia-* libraries match"
    else:
        why = "it is installed incompletely or for another platform"
        fix = f"reinstall torch (pip install --force-reinstall torch, or the CPU build: {CPU_WHEELS})"
    return f"torch {version} ({build}) failed to import: {why} ({type(err).__name__}: {first}). Fix: {fix}"
