"""Ctrl-C and SIGTERM: stop at a batch boundary, keep the journal, say how to resume.

Why: the default KeyboardInterrupt surfaced as a 78-line traceback from inside torch, and
SIGTERM (a cluster's time limit, `kill`) ended the run without a word. While batches run
(`graceful()`), a signal only sets a flag: the batch in the model finishes, the batches in
post-processing are journaled, then `run_batches` stops and the run raises `Interrupted`.
Outside batches (model loading, planning, exports) nothing is lost by stopping at once, so
the signal raises `Interrupted` right away; so does a second signal, for the impatient. Every
output is written atomically, so an interrupt at any instant leaves finished work intact.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESUME_HINT = "run the same command again to resume"


class Interrupted(BaseException):
    """The user (SIGINT) or the system (SIGTERM) asked the run to stop.

    A BaseException, like KeyboardInterrupt, so that the per-slide `except Exception` that
    lets other slides go on does not swallow it. `progress` = (batches done, batches planned)
    of the slide(s) in hand, filled in by whoever knows them.
    """

    def __init__(self, signum: int, progress: tuple[int, int] | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.progress = progress

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def message(self) -> str:
        if self.progress is None:
            return f"interrupted before any batch ran; {RESUME_HINT}"
        done, total = self.progress
        return f"interrupted after {done}/{total} batches; {RESUME_HINT}"


@dataclass
class _State:
    signum: int | None = None
    graceful: int = 0  # depth of graceful() blocks on the main thread


_state = _State()


def _handler(signum: int, frame: Any) -> None:
    first = _state.signum is None
    _state.signum = signum
    if _state.graceful and first:
        return  # run_batches sees stop_requested() after the batch in hand
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only), restore them after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state.signum = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.signum = None


@contextmanager
def graceful() -> Iterator[None]:
    """Within this block a first signal only sets the flag that `stop_requested` reads."""
    on_main = threading.current_thread() is threading.main_thread()
    _state.graceful += on_main
    try:
        yield
    finally:
        _state.graceful -= on_main


def stop_requested() -> int | None:
    """The signal number asking to stop, or None."""
    return _state.signum
