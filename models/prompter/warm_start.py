"""Where a prompter's training starts: random, or the weights of an earlier prompter.

`prompter.init_checkpoint` names a promptnucseg `model` bundle or `prompter` checkpoint (for
example the bundled model, to fine-tune it on more data), or a PromptNucSeg release prompter
(with `layout: release`). The architecture must match exactly: every tensor is loaded.
"""
from __future__ import annotations

from pathlib import Path

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
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(path, f"its prompter does not fit this config ({str(err).splitlines()[0][:200]})", "warm-start from a prompter of the same backbone, width and classes") from err
