"""Reading and writing model files: our own format, and official SAM weights.

Our files are a dict with `format: "promptnucseg"` and `kind` in {prompter, segmentor,
model}; `model` bundles both parts plus the ModelConfig, which is what the predictor and
the packaged default load. Every failure names the file and says what file was expected.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from promptnucseg.errors import FixableError

FORMAT = "promptnucseg"
FORMAT_VERSION = 1


class CheckpointError(FixableError, ValueError):
    """A weights file that is missing, unreadable, or for another model."""


def _safe_globals() -> list:
    """The few non-tensor objects other trainers' checkpoints hold, allowed by name.

    The PromptNucSeg release's files carry a numpy scalar (`f1`), numpy arrays in their
    metrics and an argparse Namespace (`args`); these rebuild plain data and run no code.
    Anything else stays refused: we never load with `weights_only=False`.
    """
    import argparse

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [
        argparse.Namespace, np.dtype, np.ndarray, *dtypes,
        multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"),  # numpy 2 and 1 names
        multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a torch file on CPU with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such weights file", "pass the path of a .pt/.pth checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise CheckpointError(path, "is empty (0 bytes): a download or copy that never finished", "re-download or re-export the model file")
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # torch.save's zip, or its legacy pickle
        raise CheckpointError(path, f"not a readable PyTorch checkpoint: neither a zip nor a pickle (it starts with {head!r})", "pass a .pt/.pth model file: `promptnucseg models` lists the bundled ones")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = _unsafe_globals(path)
        if foreign:  # a whole, readable file that holds objects we do not rebuild
            raise CheckpointError(
                path, f"holds pickled Python objects that are not weights ({', '.join(foreign[:4])})",
                "promptnucseg only loads tensors, numbers and plain data; save the state dict alone (torch.save(model.state_dict(), ...))",
            ) from err
        raise _unreadable(path, err) from err
    except Exception as err:  # torch raises many types for a cut-short or damaged file (EOFError, KeyError, ...)
        raise _unreadable(path, err) from err
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict", "pass a PromptNucSeg or SAM checkpoint")
    return obj


def _unsafe_globals(path: Path) -> list[str]:
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # not a zip checkpoint at all: the caller reports it as unreadable
        return []


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        path, f"not a readable PyTorch checkpoint, probably cut short or damaged ({type(err).__name__}: {(str(err).splitlines() or ['no detail'])[0][:120]})",
        "re-download or re-export the file; it may be truncated or not a weights file at all",
    )


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomic save: a crash mid-write never leaves a half file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buf)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def expect_kind(path: str | Path, ckpt: dict[str, Any], kinds: tuple[str, ...]) -> None:
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(path, "is not a promptnucseg checkpoint", f"pass a {'/'.join(kinds)} checkpoint written by promptnucseg")
    if ckpt.get("kind") not in kinds:
        raise CheckpointError(
            path, f"is a {ckpt.get('kind')} checkpoint, expected {' or '.join(kinds)}",
            f"pass the {'/'.join(kinds)} file (train-prompter writes prompters, train-segmentor segmentors)",
        )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 copy of floating tensors, for small shipped files (loaded back as fp32)."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
