"""Light image encoders that give SAM's prompt encoder and mask decoder a CPU-sized front end."""
from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from ..backbones import BackboneFPN


class CNNImageEncoder(nn.Module):
    """A timm CNN + FPN merged at `stride`, then SAM's neck shape (conv, LN, conv, LN)."""

    def __init__(self, backbone: str, stride: int, out_chans: int) -> None:
        super().__init__()
        strides = tuple(s for s in (4, 8, 16, 32) if s >= stride)
        self.fpn = BackboneFPN(backbone, strides, out_chans)
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.fpn(x)[0])
