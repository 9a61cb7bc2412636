"""Errors a user can act on: each names the file and says what to do about it."""
from __future__ import annotations

from promptnucseg.errors import FixableError


class PipelineInputError(FixableError):
    """Bad input (slide, image, resolution, output folder, weights) the user can fix.

    The message is one line: what is wrong with which file, then the fix. The CLI prints
    it without a traceback and exits non-zero; other slides of the run go on.
    """
