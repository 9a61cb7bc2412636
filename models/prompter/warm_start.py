"""Where a prompter's training starts: random, or the weights of an earlier prompter.

`prompter.init_checkpoint` names a promptnucseg `model` bundle or `prompter` checkpoint (for
example the bundled model, to fine-tune it on more data), or a PromptNucSeg release prompter
(with `layout: release`). The architecture must match exactly: every tensor is loaded, with
one exception: a one-class prompter may seed a typed one (C > 1). Its nucleus row of the class
head is copied to every class, so at step 0 an anchor's argmax is a nucleus class exactly
where it was before (the prompts are the one-class prompter's) and training only has to learn
to tell the classes apart. A prompter without `class_context` may seed one with it (the new
projection starts at zero).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoints import CheckpointError, float_state, read_checkpoint


def warm_start_prompter(model: nn.Module, path: str | Path) -> None:
    from ..release import read_release_prompter

    ckpt = read_checkpoint(path)
    found = read_release_prompter(path, ckpt)
    if found is not None:
        state = found.state
    elif ckpt.get("format") == "promptnucseg" and ckpt.get("kind") in ("model", "prompter"):
        state = float_state(ckpt["prompter"] if ckpt["kind"] == "model" else ckpt["state_dict"])
    else:
        raise CheckpointError(path, "is neither a promptnucseg model/prompter file nor a PromptNucSeg release prompter", "pass the bundled model, a train-prompter best.pt, or the release's best.pth")
    state = _expand_class_head(model, state)
    if getattr(model, "context_proj", None) is not None and "context_proj.weight" not in state:
        # a prompter trained without tissue context: its zero-started projection keeps its predictions
        state = {**state, **{f"context_proj.{k}": v for k, v in model.context_proj.state_dict().items()}}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(path, f"its prompter does not fit this config ({str(err).splitlines()[0][:200]})", "warm-start from a prompter of the same backbone, width and classes") from err


def _expand_class_head(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-class state's class head (2 rows: nucleus, background) widened to the model's C + 1."""
    head = getattr(model, "class_head", None)
    if not isinstance(head, nn.Sequential):
        return state
    key = f"class_head.{len(head) - 1}"  # its last Linear, wherever `mlp` puts it
    weight, bias, want = state.get(f"{key}.weight"), state.get(f"{key}.bias"), head[-1].weight
    if weight is None or bias is None or weight.shape == want.shape or weight.shape[0] != 2 or weight.shape[1:] != want.shape[1:]:
        return state
    classes = want.shape[0] - 1
    nucleus_w, nucleus_b = weight[:1].expand(classes, -1), bias[:1].expand(classes)
    return {**state, f"{key}.weight": torch.cat([nucleus_w, weight[1:]]), f"{key}.bias": torch.cat([nucleus_b, bias[1:]])}
