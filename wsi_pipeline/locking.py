"""One run per slide folder: a lock file that a killed run never leaves stuck.

Why: two `segment` runs into one `--out` (an overnight script started twice, a cluster array
job) interleaved their journals and left finished slides with empty tables. A slide's
output folder is therefore held by one run at a time, for its whole life: planning, the
journal, the batches, the exports and the report.

How, so that it works on local and network file systems alike:
- The lock is `<slide folder>/.promptnucseg.lock`, created with O_CREAT | O_EXCL, which is
  atomic on local file systems and on NFSv3+ (no fcntl/flock: those are advisory, per host,
  and unreliable over NFS and SMB). It holds the owner's pid, hostname, boot id, the
  process's start time (so a recycled pid is not mistaken for the owner), and a token.
- The owner touches the file every `heartbeat_s`: its mtime says the owner is alive, on the
  file server's own clock.
- A lock is stale when its owner is provably gone: on the same host (and boot), the pid is
  not running or runs a different process; on another host, no heartbeat for
  `stale_after_s` (measured against a file just written there, so client clock skew does
  not matter). A stale lock is taken over under a short-lived `.break` mutex that re-reads
  the lock first, so two runs breaking one stale lock cannot also break each other's new one.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import PipelineInputError
from .atomic import _pid_alive  # the one rule for "is this pid running" (partials use it too)
from .outputs import LOCK_NAME

BREAK_SUFFIX = ".break"


@dataclass(frozen=True)
class LockConfig:
    """Timings of the lock; the defaults suit overnight runs on shared file systems."""

    heartbeat_s: float = 30.0  # how often the owner refreshes the lock's mtime
    stale_after_s: float = 300.0  # a lock of another host without heartbeat this long is stale
    poll_s: float = 2.0  # how often a waiting run looks again
    break_stale_s: float = 60.0  # a `.break` mutex older than this was left by a killed breaker


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


@dataclass(frozen=True)
class LockOwner:
    """Who holds a folder: enough to tell, from any host, whether it still runs."""

    pid: int
    host: str
    boot_id: str | None
    process_start: str | None
    since: float  # time.time() when the lock was taken
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def me(cls) -> "LockOwner":
        return cls(os.getpid(), socket.gethostname(), _boot_id(), process_start(os.getpid()), time.time())

    @classmethod
    def parse(cls, raw: bytes) -> "LockOwner | None":
        try:
            d = json.loads(raw)
            return cls(int(d["pid"]), str(d["host"]), d.get("boot_id"), d.get("process_start"), float(d["since"]), str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None  # being written right now, or damaged

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, since {since}"

    def gone_locally(self) -> bool | None:
        """True/False when this host can judge the owner itself; None when it cannot."""
        if self.host != socket.gethostname():
            return None
        here = _boot_id()
        if self.boot_id and here and self.boot_id != here:
            return True  # the machine rebooted since
        if not _pid_alive(self.pid):
            return True
        started = process_start(self.pid)
        return bool(self.process_start and started and started != self.process_start)  # pid recycled


class FolderLocked(PipelineInputError):
    """Another live run holds the slide's output folder (the CLI exits 75 if only these failed)."""


def _fs_now(folder: Path) -> float:
    """'Now' on the clock of the file system holding `folder` (mtime of a fresh file)."""
    fd, probe = tempfile.mkstemp(prefix=".clock-", dir=folder)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(probe)


def _read(path: Path) -> tuple[bytes, float] | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(), os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None


class FolderLock:
    """Hold `folder` for this process: `with FolderLock(folder).acquire(wait=False): ...`."""

    def __init__(self, folder: str | Path, config: LockConfig | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.config = config or LockConfig()
        self.owner: LockOwner | None = None
        self.took_over: LockOwner | None = None  # the dead owner whose lock this one replaced
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ----- taking and giving back --------------------------------------------------------------
    def acquire(self, wait: bool = False, log: Callable[[str], None] | None = None) -> "FolderLock":
        """Take the lock, taking over a stale one; if a live run holds it, raise FolderLocked
        or, with `wait`, poll until it is free."""
        told = False
        while True:
            if self._create():
                return self
            seen = _read(self.path)
            if seen is None:
                continue  # released between our two looks
            raw, mtime = seen
            holder = LockOwner.parse(raw)
            if self._stale(holder, mtime):
                if not self._break(raw, holder):
                    time.sleep(0.05)  # another run is breaking it right now
                continue
            if not wait:
                raise self.refusal(holder)
            if log is not None and not told:
                log(f"{self.folder}: waiting for the run that holds it ({holder.describe() if holder else 'unknown owner'})")
                told = True
            time.sleep(self.config.poll_s)

    def held_by(self) -> LockOwner | None:
        """A quick look without taking the lock: the live owner, or None (free or stale)."""
        seen = _read(self.path)
        if seen is None:
            return None
        holder = LockOwner.parse(seen[0])
        return None if holder is None or self._stale(holder, seen[1]) else holder

    def refusal(self, holder: LockOwner | None) -> FolderLocked:
        who = holder.describe() if holder else "an unknown owner (the lock is being written or damaged)"
        return FolderLocked(
            self.folder, f"is in use by another promptnucseg run ({who})",
            "wait for that run to finish, pass --wait-for-lock to queue behind it, or use another --out; "
            f"a lock left by a killed run is taken over by itself (delete {LOCK_NAME} only if you are sure no run uses it)",
        )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        try:
            if self.owner is not None and self._ours():
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the folder became unwritable: the real error is the caller's; the next run takes the lock over (its owner is gone)
        self.owner = None

    def __enter__(self) -> "FolderLock":
        if self.owner is None:
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ----- inside ------------------------------------------------------------------------------
    def _create(self) -> bool:
        owner = LockOwner.me()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(asdict(owner)).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)  # an empty lock (full disk) would block reruns
            raise
        os.close(fd)
        self.owner = owner
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="folder-lock", daemon=True)
        self._beat.start()
        return True

    def _ours(self) -> bool:
        seen = _read(self.path)
        holder = LockOwner.parse(seen[0]) if seen else None
        return holder is not None and self.owner is not None and holder.token == self.owner.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                if self._ours():
                    os.utime(self.path)
            except OSError:
                pass  # a network blip: the next beat tries again

    def _stale(self, holder: LockOwner | None, mtime: float) -> bool:
        gone = holder.gone_locally() if holder is not None else None
        if gone is not None:
            return gone
        return _fs_now(self.folder) - mtime > self.config.stale_after_s  # another host: no heartbeat

    def _break(self, raw: bytes, holder: LockOwner | None) -> bool:
        """Remove the stale lock whose content is `raw`, unless it changed meanwhile."""
        mutex = self.path.with_name(LOCK_NAME + BREAK_SUFFIX)
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read(mutex)
            if seen is not None and _fs_now(self.folder) - seen[1] > self.config.break_stale_s:
                mutex.unlink(missing_ok=True)  # its breaker was killed mid-way
            return False
        try:
            os.close(fd)
            now = _read(self.path)
            if now is None or now[0] != raw:
                return False  # released or already taken over: look again
            self.path.unlink()
            self.took_over = holder
            return True
        finally:
            mutex.unlink(missing_ok=True)
