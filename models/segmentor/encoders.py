"""Light image encoders that give SAM's prompt encoder and mask decoder a CPU-sized front end."""
from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from ..backbones import BackboneFPN
from .high_res import ImageEmbedding


class CNNImageEncoder(nn.Module):
    """A timm CNN + FPN merged at `stride`, then SAM's neck shape (conv, LN, conv, LN).

    With `fine_strides` it also hands out the backbone's raw stages at those strides (for
    `HighResMaskDecoder`), as an `ImageEmbedding`, from the same backbone pass.
    """

    def __init__(self, backbone: str, stride: int, out_chans: int, fine_strides: tuple[int, ...] = ()) -> None:
        super().__init__()
        strides = tuple(s for s in (4, 8, 16, 32) if s >= stride)
        self.fpn = BackboneFPN(backbone, strides, out_chans, raw_strides=fine_strides)
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def fine_channels(self) -> tuple[int, ...]:
        return tuple(self.fpn.raw_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor | ImageEmbedding:
        if not self.fpn.raw_channels:
            return self.neck(self.fpn(x)[0])
        levels, fine = self.fpn.forward_with_raw(x)
        return ImageEmbedding(self.neck(levels[0]), tuple(fine))
