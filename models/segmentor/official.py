"""Load the official SAM checkpoints (sam_vit_b_01ec64, sam_vit_l_0b3195, sam_vit_h_4b8939) unchanged.

They were trained at 1024 px (64x64 tokens); we run 256-px crops (16x16 tokens), so the
absolute position embedding is resized bicubically and the relative-position tables of the
global-attention blocks linearly, as the authors' release does. Nothing else changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

OFFICIAL_ARCH_BY_WIDTH = {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}


def is_official_sam_state(state: dict) -> bool:
    return "image_encoder.patch_embed.proj.weight" in state and "mask_decoder.iou_token.weight" in state


def official_arch(state: dict) -> str:
    width = int(state["image_encoder.pos_embed"].shape[-1])
    try:
        return OFFICIAL_ARCH_BY_WIDTH[width]
    except KeyError:
        raise ValueError(f"SAM checkpoint with image-encoder width {width} is not ViT-B/L/H") from None


def adapt_official_state(state: dict, target: dict) -> dict:
    """Resize position tables in `state` to the shapes in `target` (a model's state_dict)."""
    out = {}
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            out[key] = value
        elif key.endswith("pos_embed"):  # (1, H, W, C) -> (1, h, w, C)
            v = value.permute(0, 3, 1, 2).float()
            v = F.interpolate(v, size=want.shape[1:3], mode="bicubic", align_corners=False)
            out[key] = v.permute(0, 2, 3, 1).to(value.dtype)
        elif ".rel_pos_" in key:  # (2*S-1, head_dim) -> (2*s-1, head_dim)
            v = value.float().t().unsqueeze(0)
            v = F.interpolate(v, size=want.shape[0], mode="linear", align_corners=False)
            out[key] = v[0].t().to(value.dtype)
        else:
            raise ValueError(f"SAM checkpoint tensor {key} has shape {tuple(value.shape)}, model wants {tuple(want.shape)}")
    return out


def load_official_sam(model: torch.nn.Module, state: dict) -> None:
    """Load an official SAM state dict into a `Segmentor`; every key must be used."""
    adapted = adapt_official_state(state, model.state_dict())
    missing, unexpected = model.load_state_dict(adapted, strict=False)
    if missing or unexpected:
        raise ValueError(f"SAM checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def init_from_official(model: torch.nn.Module, path: str) -> None:
    """Start fine-tuning from an official SAM file (clear error if it is anything else)."""
    from ..checkpoints import CheckpointError, read_checkpoint

    state = read_checkpoint(path)
    if not is_official_sam_state(state):
        raise CheckpointError(path, "is not an official SAM checkpoint", "pass sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth")
    try:
        load_official_sam(model, state)
    except ValueError as err:
        raise CheckpointError(path, str(err), "use the segmentor arch that matches the checkpoint (sam_vit_b/l/h)") from err
