"""Rows appended to a resizable chunked array (zarr or HDF5) in whole chunks only.

Why: appending a batch of a few thousand rows at a time would rewrite (and, compressed,
recompress) the last, partial chunk on every batch; rows are held back until a whole chunk
is full, so each chunk is written exactly once and memory stays at one chunk per array.
Works on anything with `chunks`, `shape`, `resize(shape)` and slice assignment: a
`zarr.Array` and an `h5py.Dataset` both qualify.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class ChunkAppender:
    """Append rows to `array` (first axis growing); call `close()` to write the rest."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.rows = int(array.chunks[0])
        self.pending: list[np.ndarray] = []
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.pending.append(np.asarray(values))
            self.count += len(values)
        if self.count >= self.rows:
            self._flush(final=False)

    def close(self) -> None:
        if self.count:
            self._flush(final=True)

    def _flush(self, final: bool) -> None:
        data = np.concatenate(self.pending)
        k = len(data) if final else (len(data) // self.rows) * self.rows
        n = self.array.shape[0]
        self.array.resize((n + k,) + tuple(self.array.shape[1:]))
        self.array[n : n + k] = data[:k]
        rest = data[k:]
        self.pending = [rest] if len(rest) else []
        self.count = len(rest)
