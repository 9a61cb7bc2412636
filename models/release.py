"""The authors' released checkpoints (windygoo/PromptNucSeg), read as they are.

A user with the release's files gets the paper's model, not an approximation:

- prompter files (`best.pth`: `model`; `latest.pth`: `model` and `model_ema`, preferred) map
  key for key onto our prompter built with `layout: release` (network.py holds the
  architecture switches); the backbone sizes, levels, classes and width are read off the
  state dict, so every tensor is used and none is missing;
- segmentor files are SAM state dicts wrapped in `{"model": ...}` and load through the
  official-SAM path (position tables resized as for SAM's own files);
- the release's inference settings per data set are presets, `configs/release_<name>.yaml`
  (a segmentor size may have its own, `release_<name>_<b|l|h>.yaml`), chosen from what a
  file says about itself or by the user (`--preset`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError
from .config import ModelConfig, PrompterConfig, from_dict, load_experiment
from .facts import RELEASE_PRESETS
from .segmentor.official import is_official_sam_state

PRESETS = RELEASE_PRESETS

#: release prompter names -> ours (regex on the key, replacement); every key must match one
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.backbone\.(stem|stages)\.(\d+)\.", r"fpn.body.\1_\2."),
    (r"^backbone\.neck\.lateral_convs\.(\d+)\.conv\.", r"fpn.lateral.\1."),
    (r"^backbone\.neck\.fpn_convs\.(\d+)\.conv\.", r"fpn.output.\1."),
    (r"^backbone\.neck1\.lateral_convs\.(\d+)\.conv\.", r"aux_fpn.lateral.\1."),
    (r"^backbone\.neck1\.fpn_convs\.(\d+)\.conv\.", r"aux_fpn.output.\1."),
    (r"^deform_layer\.layers\.", "first_offset."),
    (r"^reg_head\.layers\.", "offset_head."),
    (r"^cls_head\.layers\.", "class_head."),
    (r"^conv\.", "mix."),
    (r"^mask_head\.", "aux_head."),
)

#: the release's ConvNeXt-Small (timm), whose sizes need no kwargs
_CONVNEXT_SMALL = {"depths": [3, 3, 27, 3], "dims": [96, 192, 384, 768]}


def release_prompter_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The prompter weights of a release file (`model_ema` when present), or None."""
    for key in ("model_ema", "model"):
        state = ckpt.get(key)
        if isinstance(state, dict) and any(k.startswith("backbone.backbone.") for k in state) and "deform_layer.layers.0.weight" in state:
            return state
    return None


def release_segmentor_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The SAM state dict inside a release segmentor file (`{"model": ...}`), or None."""
    state = ckpt.get("model")
    return state if isinstance(state, dict) and is_official_sam_state(state) else None


def to_our_keys(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in _KEY_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise CheckpointError(path, f"release prompter key {key!r} has no counterpart in our release-layout prompter", "pass an unmodified PromptNucSeg release prompter (best.pth or latest.pth)")
    return out


def prompter_config_from_state(state: dict[str, torch.Tensor], base: PrompterConfig) -> PrompterConfig:
    """`base` (a preset's prompter) with the sizes this state dict was trained at."""
    hidden = int(state["conv.weight"].shape[0])
    levels = int(state["conv.weight"].shape[1]) // hidden
    inputs = len({k.split(".")[3] for k in state if k.startswith("backbone.neck.lateral_convs.")})
    stages = sorted({int(k.split(".")[3]) for k in state if k.startswith("backbone.backbone.stages.")})
    dims = [int(state[f"backbone.backbone.stages.{i}.blocks.0.conv_dw.weight"].shape[0]) for i in stages]
    depths = [len({k.split(".")[5] for k in state if k.startswith(f"backbone.backbone.stages.{i}.blocks.")}) for i in stages]
    sizes = {"depths": depths, "dims": dims}
    all_strides = tuple(4 * 2**i for i in range(inputs))
    values = {
        **vars(base),
        "layout": "release",
        "backbone": "convnext_small",
        "backbone_kwargs": {} if sizes == _CONVNEXT_SMALL else sizes,
        "fpn_channels": hidden,
        "strides": all_strides[:levels],
        "neck_inputs": all_strides,
        "num_classes": int(state["cls_head.layers.3.weight"].shape[0]) - 1,
    }
    return PrompterConfig(**values)


@dataclass
class ReleasePrompter:
    state: dict[str, torch.Tensor]  # in our key names
    config: PrompterConfig
    preset: str
    preset_reason: str


def read_release_prompter(path: str | Path, ckpt: dict[str, Any], preset: str | None = None) -> ReleasePrompter | None:
    """A release prompter file as our prompter's state and config, or None if it is not one."""
    state = release_prompter_state(ckpt)
    if state is None:
        return None
    num_classes = int(state["cls_head.layers.3.weight"].shape[0]) - 1
    name, reason = choose_preset(ckpt, num_classes, preset)
    config = prompter_config_from_state(state, load_preset(name).prompter)
    return ReleasePrompter(to_our_keys(state, path), config, name, reason)


def choose_preset(ckpt: dict[str, Any], num_classes: int | None, preset: str | None) -> tuple[str, str]:
    """Which data set's settings to run a release file with, and why."""
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown release preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return preset, "chosen by the user"
    args = ckpt.get("args")
    config_name = str(getattr(args, "config", "") or "")
    for name in PRESETS:
        if name in config_name.lower():
            return name, f"the file's training args name config {config_name!r}"
    if num_classes == 5:
        return "pannuke", "a 5-class prompter (PanNuke's classes)"
    return "kumar", "a 1-class file that does not say its data set: Kumar's settings (pass --preset cpm17 for CPM-17 files)"


def load_preset(name: str, segmentor_arch: str | None = None) -> ModelConfig:
    """`configs/release_<name>.yaml`, or its variant for one SAM size when there is one."""
    if name not in PRESETS:
        raise ValueError(f"unknown release preset {name!r}; choose one of {', '.join(PRESETS)}")
    folder = resources.files("promptnucseg.configs")
    size = (segmentor_arch or "").removeprefix("sam_vit_")
    chosen = folder / f"release_{name}_{size}.yaml"
    if not (size and chosen.is_file()):
        chosen = folder / f"release_{name}.yaml"
    with resources.as_file(chosen) as path:
        return load_experiment(path).model


def apply_preset(config: ModelConfig, preset: ModelConfig) -> ModelConfig:
    """Run settings of a release preset on top of a model config: what the release does at
    test time (inference, negatives), keeping the networks' own sizes."""
    config.inference = preset.inference
    config.segmentor.num_negatives = preset.segmentor.num_negatives
    return config


def preset_model_config(name: str, prompter: PrompterConfig | None, segmentor_fields: dict[str, Any]) -> ModelConfig:
    """A whole ModelConfig for a release pair: the preset with the files' own sizes."""
    arch = segmentor_fields.get("arch")
    config = load_preset(name, arch)
    if prompter is not None:
        config.prompter = prompter
    seg = {**vars(config.segmentor), **segmentor_fields}
    config.segmentor = from_dict(type(config.segmentor), seg)
    return config
