"""A timm backbone (`features_only`) with a feature pyramid on top.

Any timm model name works, so the paper's ConvNeXt-Small and a CPU-sized ResNet share
one code path.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


class BackboneFPN(nn.Module):
    """The backbone stages at `strides` -> FPN levels of `channels` each, finest first.

    Stages are picked by stride, not index, because timm numbers stages differently per
    family (a ResNet's stage 0 is stride 2, a ConvNeXt's is stride 4).
    """

    def __init__(self, backbone: str, strides: tuple[int, ...], channels: int, raw_strides: tuple[int, ...] = ()) -> None:
        super().__init__()
        probe = timm.create_model(backbone, pretrained=False, features_only=True)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in (*strides, *raw_strides) if s not in reductions]
        if missing:
            raise ValueError(f"timm backbone {backbone!r} has no stage at stride {missing} (it has {reductions})")
        wanted = sorted(set(strides) | set(raw_strides))
        self.body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=tuple(reductions.index(s) for s in wanted))
        got = list(self.body.feature_info.reduction())
        self._fpn_at = [got.index(s) for s in strides]  # positions in the body's outputs
        self._raw_at = [got.index(s) for s in raw_strides]
        in_channels = [self.body.feature_info.channels()[i] for i in self._fpn_at]
        self.strides: list[int] = list(strides)
        #: channels of the un-pyramided stages at `raw_strides` (fine detail for high-resolution heads)
        self.raw_channels: list[int] = [self.body.feature_info.channels()[i] for i in self._raw_at]
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pyramid(self.body(x))

    def forward_with_raw(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """FPN levels and the raw backbone stages at `raw_strides`, from one backbone pass."""
        feats = self.body(x)
        return self.pyramid(feats), [feats[i] for i in self._raw_at]

    def pyramid(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """FPN levels from the body's outputs (kept separate so callers can reuse `feats`)."""
        laterals = [conv(feats[i]) for conv, i in zip(self.lateral, self._fpn_at)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [conv(f) for conv, f in zip(self.output, laterals)]
