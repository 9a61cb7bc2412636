"""Turning `--device cpu|cuda|cuda:N|auto` into a torch device, with a clear refusal."""
from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU. Fix: use --device cpu or auto")
    return torch.device(device)
