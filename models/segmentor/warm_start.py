"""Where a segmentor's training starts: official SAM weights, or one of our own segmentors.

`segmentor.init_checkpoint` names either. Our own file (a `model` bundle or a `segmentor`
checkpoint) loads into a config that may add the high-resolution branches: only those may be
missing (they start at zero, so the warm-started model first predicts what the old one did);
any other difference is refused.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoints import CheckpointError, float_state, read_checkpoint
from .official import init_from_official, is_official_sam_state

#: parameter-name parts of the branches `high_res` adds (models/segmentor/high_res.py)
HIGH_RES_KEYS = ("mask_decoder.fuse_stride4.", "mask_decoder.fuse_stride2.", "mask_decoder.upscale_stride2.")


def warm_start(model: nn.Module, path: str | Path, parts: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Load `path` into `model`; returns the names left at their initialisation. With `parts`
    (name prefixes) only the tensors under them are taken, each of which must fit exactly."""
    ckpt = read_checkpoint(path)
    if is_official_sam_state(ckpt):
        init_from_official(model, str(path))
        return []
    if ckpt.get("format") != "promptnucseg" or ckpt.get("kind") not in ("model", "segmentor"):
        raise CheckpointError(path, "is neither an official SAM checkpoint nor a promptnucseg model/segmentor file", "pass sam_vit_b/l/h, a file from `promptnucseg export-model`, or a train-segmentor best.pt")
    state = float_state(ckpt["segmentor"] if ckpt["kind"] == "model" else ckpt["state_dict"])
    if parts:
        return _load_parts(model, state, tuple(parts), path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(path, f"its segmentor does not fit this config ({str(err).splitlines()[0]})", "warm-start from a segmentor of the same arch and widths") from err
    foreign = [k for k in missing if not k.startswith(HIGH_RES_KEYS)]
    if foreign or unexpected:
        raise CheckpointError(path, f"its segmentor does not fit this config (missing {foreign[:4]}, unexpected {unexpected[:4]})", "warm-start from a segmentor of the same arch and widths")
    return list(missing)


def _load_parts(model: nn.Module, state: dict, parts: tuple[str, ...], path: str | Path) -> list[str]:
    def under(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in parts)

    own = model.state_dict()
    chosen = {k: v for k, v in state.items() if under(k)}
    if not chosen:
        raise CheckpointError(path, f"holds no segmentor tensor under init_parts {list(parts)}", "name prefixes such as prompt_encoder or mask_decoder.transformer")
    unfit = [k for k, v in chosen.items() if k not in own or own[k].shape != v.shape]
    if unfit:
        raise CheckpointError(path, f"{len(unfit)} tensors under init_parts do not fit this config (first: {unfit[0]})", "leave that part out of init_parts, or match its widths")
    model.load_state_dict(chosen, strict=False)
    return [k for k in own if k not in chosen]
