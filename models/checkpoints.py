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
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "promptnucseg"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A weights file that is missing, unreadable, or for another model."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}. Fix: {fix}")

    def __reduce__(self) -> tuple:
        # rebuilt from its three parts, so it survives pickling from a dask worker
        return (type(self), (self.path, self.problem, self.fix))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a torch file on CPU with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such weights file", "pass the path of a .pt/.pth checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
            "re-download or re-export the file; it may be truncated or not a weights file at all",
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict", "pass a PromptNucSeg or SAM checkpoint")
    return obj


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
