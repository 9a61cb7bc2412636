"""Prompter network: anchors on a grid, two-stage bilinear sampling, offset/class heads.

Per anchor the stride-4 feature gives a first offset; every pyramid level is re-sampled
at the shifted point, the samples are concatenated and mixed by a 3x3 conv over the
anchor grid (neighbouring anchors see each other), then two MLP heads give the final
offset and C+1 logits (last = background). A separate stride-4 head predicts the
nuclear foreground, trained with focal loss and used at inference to filter prompts.

`layout: release` reproduces the authors' released network exactly, so their files load key
for key (models/release.py maps the names): the auxiliary branch is a second one-output
FPN, no ReLU follows the mixing conv, the last foreground conv is 1x1 with padding 1 and is
upsampled with align_corners=True, points are sampled at 2p/stride/feature_size - 1 with zero
padding, and inputs are padded by reflection to the anchor step only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PrompterConfig
from ..backbones import BackboneFPN, FPNNeck

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mlp(in_dim: int, out_dim: int, hidden: int = 256, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


@dataclass
class PrompterOutput:
    points: torch.Tensor  # (B, A, 2) refined anchor positions (x, y) in input pixels
    logits: torch.Tensor  # (B, A, C+1)
    mask_logits: torch.Tensor  # (B, 1, H, W) auxiliary foreground logits at input size
    anchors: torch.Tensor  # (A, 2)


def anchor_grid(height: int, width: int, step: int, device: torch.device | None = None) -> torch.Tensor:
    """Anchors every `step` px, offset by half a step; (A, 2) as (x, y), row-major."""
    ys = torch.arange(height // step, device=device, dtype=torch.float32) * step + step / 2
    xs = torch.arange(width // step, device=device, dtype=torch.float32) * step + step / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def sample_points(feature: torch.Tensor, points: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear features (B, A, C) at input-pixel points (B, A, 2) of an image of `size_hw`."""
    h, w = size_hw
    scale = points.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = (points / scale * 2 - 1).unsqueeze(2)  # (B, A, 1, 2)
    out = F.grid_sample(feature, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.squeeze(3).transpose(1, 2)


def sample_points_release(feature: torch.Tensor, points: torch.Tensor, stride: int) -> torch.Tensor:
    """The release's sampling: grid 2p / stride / feature size - 1, zero padding outside."""
    size = points.new_tensor([feature.shape[-1], feature.shape[-2]])
    grid = (2.0 * points / stride / size - 1.0).unsqueeze(2)
    out = F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(3).transpose(1, 2)


class Prompter(nn.Module):
    def __init__(self, config: PrompterConfig) -> None:
        super().__init__()
        self.config = config
        c = config.fpn_channels
        if config.strides[0] != 4:
            raise ValueError(f"prompter strides must start at 4 (anchors are sampled at stride 4), got {config.strides}")
        if config.layout not in ("promptnucseg", "release"):
            raise ValueError(f"unknown prompter layout {config.layout!r}; choose promptnucseg or release")
        self.release = config.layout == "release"
        neck_inputs = tuple(config.neck_inputs) or tuple(config.strides)
        if tuple(neck_inputs[: len(config.strides)]) != tuple(config.strides):
            raise ValueError(f"prompter strides {config.strides} must be the finest of neck_inputs {neck_inputs}")
        self.fpn = BackboneFPN(config.backbone, neck_inputs, c, num_outputs=len(config.strides), backbone_kwargs=config.backbone_kwargs)
        n_levels = len(self.fpn.strides)
        self.first_offset = mlp(c, 2, c, config.dropout)
        self.mix = nn.Conv2d(c * n_levels, c, 3, padding=1)
        self.offset_head = mlp(c, 2, c, config.dropout)
        self.class_head = mlp(c, config.num_classes + 1, c, config.dropout)
        if config.class_context and self.release:
            raise ValueError("prompter.class_context is not part of the release layout; leave it 0 there")
        if config.class_context < 0 or (config.class_context and config.class_context % 2 == 0):
            raise ValueError(f"prompter.class_context must be 0 or an odd number of cells, got {config.class_context}")
        self.context_proj = nn.Linear(c, c) if config.class_context else None
        if self.context_proj is not None:
            nn.init.zeros_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)
        # auxiliary foreground branch: its own one-level (stride 4) pyramid over all stages
        if self.release:
            self.aux_fpn = FPNNeck(self.fpn.body_channels, c, num_outputs=1)
        else:
            self.aux_fpn_lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in self.fpn.body_channels)
        self.aux_head = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1, padding=1 if self.release else 0)
        )
        for head in (self.first_offset, self.offset_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded bottom/right to a multiple of this (anchor step and largest stride;
        the release pads to the anchor step only)."""
        return self.config.anchor_step if self.release else math.lcm(self.config.anchor_step, max(self.fpn.strides))

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8/float 0..255 -> normalised and padded to `pad_multiple`."""
        x = (images_uint8.float() - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad = (0, (-w) % m, 0, (-h) % m)
        if self.release and any(pad):  # albumentations' PadIfNeeded default: reflect, edge not repeated
            return F.pad(x, pad, mode="reflect")
        return F.pad(x, pad)

    def forward(self, images: torch.Tensor) -> PrompterOutput:
        """`images`: (B, 3, H, W) already normalised and padded (see `normalize`)."""
        b, _, h, w = images.shape
        feats = self.fpn.body(images)
        levels = self.fpn.pyramid(feats)
        anchors = anchor_grid(h, w, self.config.anchor_step, images.device)
        pts0 = anchors.unsqueeze(0).expand(b, -1, -1)
        shifted = pts0 + self.first_offset(self._sample(levels[0], 0, pts0, (h, w)))
        sampled = torch.cat([self._sample(lv, i, shifted, (h, w)) for i, lv in enumerate(levels)], dim=2)  # (B, A, C*L)
        gh, gw = h // self.config.anchor_step, w // self.config.anchor_step
        grid = self.mix(sampled.transpose(1, 2).reshape(b, -1, gh, gw))
        mixed = (grid if self.release else F.relu(grid)).flatten(2).transpose(1, 2)  # (B, A, C)
        points = shifted + self.offset_head(mixed)
        logits = self.class_head(mixed + self._context(levels[-1], shifted, (h, w)) if self.context_proj is not None else mixed)
        return PrompterOutput(points=points, logits=logits, mask_logits=self._aux_mask(feats, (h, w)), anchors=anchors)

    def _context(self, coarsest: torch.Tensor, points: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        k = self.config.class_context
        pooled = F.avg_pool2d(coarsest, k, stride=1, padding=k // 2, count_include_pad=False)
        return self.context_proj(self._sample(pooled, len(self.fpn.strides) - 1, points, size_hw))

    def _sample(self, level: torch.Tensor, index: int, points: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        if self.release:
            return sample_points_release(level, points, self.fpn.strides[index])
        return sample_points(level, points, size_hw)

    def _aux_mask(self, feats: list[torch.Tensor], size_hw: tuple[int, int]) -> torch.Tensor:
        if self.release:
            merged = self.aux_fpn.top_down(feats)[0]
            return F.interpolate(self.aux_head(merged), size=size_hw, mode="bilinear", align_corners=True)
        base = feats[0].shape[-2:]
        merged = sum(
            F.interpolate(conv(f), size=base, mode="bilinear", align_corners=False) if i else conv(f)
            for i, (conv, f) in enumerate(zip(self.aux_fpn_lateral, feats))
        )
        return F.interpolate(self.aux_head(merged), size=size_hw, mode="bilinear", align_corners=False)
