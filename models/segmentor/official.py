"""Load the official SAM checkpoints (sam_vit_b_01ec64, sam_vit_l_0b3195, sam_vit_h_4b8939) unchanged.

They were trained at 1024 px (64x64 tokens); we run 256-px crops (16x16 tokens), so the
absolute position embedding is resized bicubically and the relative-position tables of the
global-attention blocks linearly, as the authors' release does. Nothing else changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

def is_official_sam_state(state: dict) -> bool:
    return "image_encoder.patch_embed.proj.weight" in state and "mask_decoder.iou_token.weight" in state


def official_sizes(state: dict) -> dict:
    """SAM's architecture sizes read off its state dict: SegmentorConfig fields for `sam_vit`.

    Heads come from the relative-position tables (their width is the head dimension),
    global-attention blocks from the table length (2 * 64 - 1 at SAM's 1024 px input).
    """
    pos = state["image_encoder.pos_embed"]  # (1, 64, 64, dim)
    dim, grid = int(pos.shape[-1]), int(pos.shape[1])
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")})
    tables = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in blocks]
    windows = {int(t.shape[0] + 1) // 2 for t in tables if t.shape[0] != 2 * grid - 1}
    layers = {int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers.")}
    return {
        "vit_dim": dim,
        "vit_depth": len(blocks),
        "vit_heads": dim // int(tables[0].shape[1]),
        "vit_global_attn": tuple(i for i, t in zip(blocks, tables) if t.shape[0] == 2 * grid - 1),
        "vit_window": windows.pop() if len(windows) == 1 else 14,
        "embed_dim": int(state["image_encoder.neck.0.weight"].shape[0]),
        "decoder_depth": len(layers),
        "decoder_mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
    }


#: the official checkpoints' sizes (SAM's build_sam), to name them by arch
OFFICIAL_SIZES = {
    "sam_vit_b": {"vit_dim": 768, "vit_depth": 12, "vit_heads": 12, "vit_global_attn": (2, 5, 8, 11)},
    "sam_vit_l": {"vit_dim": 1024, "vit_depth": 24, "vit_heads": 16, "vit_global_attn": (5, 11, 17, 23)},
    "sam_vit_h": {"vit_dim": 1280, "vit_depth": 32, "vit_heads": 16, "vit_global_attn": (7, 15, 23, 31)},
}
_OFFICIAL_REST = {"vit_window": 14, "embed_dim": 256, "decoder_depth": 2, "decoder_mlp_dim": 2048}


def official_config(state: dict) -> dict:
    """SegmentorConfig fields for a SAM-layout state dict: `sam_vit_b/l/h` when it has their
    sizes, else `sam_vit` with the sizes read off it (e.g. a reduced model)."""
    sizes = official_sizes(state)
    for arch, known in OFFICIAL_SIZES.items():
        if sizes == {**known, **_OFFICIAL_REST}:
            return {"arch": arch}
    return {"arch": "sam_vit", **sizes}


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
