"""Output files appear complete under their final name or not at all.

Every writer checks its folder first (a clear `PipelineInputError` before hours of work
rather than a traceback at the end), writes to a hidden sibling, fsyncs, then renames:
a killed run never leaves a truncated GeoJSON that QuPath would half-import.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PipelineInputError


def ensure_output_folder(path: str | Path) -> Path:
    """Create `path`'s parent folder if needed and prove it is writable; return `path`."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PipelineInputError(
            folder,
            f"cannot write {path.name} here ({err.strerror or err})",
            "choose another output folder, or fix its permissions and free space",
        ) from err
    return path


def partial_name(path: Path) -> Path:
    """The hidden sibling a writer fills before the final rename."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can judge: leave it alone
    return True


def clear_stale_partials(path: Path) -> None:
    """Remove hidden leftovers of `path` from writers that were killed (their process is
    gone), so a kill never leaves debris beside the outputs for long."""
    for prefix in (f".{path.name}.partial-", f".{path.name}.old-"):
        for leftover in path.parent.glob(f"{prefix}*"):
            pid = leftover.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    clear_stale_partials(path)
    tmp = partial_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a small text file (a report, a manifest) all at once or not at all."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return path


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Like `atomic_file` for a folder output (a zarr store): fill a hidden sibling
    folder, then swap it in; a previous output under `path` is removed only after."""
    path = Path(path)
    clear_stale_partials(path)
    tmp = partial_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_folder(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
