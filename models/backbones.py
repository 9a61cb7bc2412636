"""A timm backbone (`features_only`) with a feature pyramid on top.

Any timm model name works, so the paper's ConvNeXt-Small and a CPU-sized ResNet share
one code path.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


class FPNNeck(nn.Module):
    """A top-down feature pyramid: 1x1 laterals, nearest-upsampled sums, 3x3 output convs.

    All inputs feed the top-down path; only the first `num_outputs` levels get an output
    conv (the release's PanNuke prompter feeds four stages and uses three; its auxiliary
    foreground branch is such a pyramid with one output).
    """

    def __init__(self, in_channels: list[int], channels: int, num_outputs: int | None = None) -> None:
        super().__init__()
        self._add_convs(in_channels, channels, num_outputs)

    def _add_convs(self, in_channels: list[int], channels: int, num_outputs: int | None) -> None:
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels[: num_outputs or len(in_channels)])

    def top_down(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [conv(f) for conv, f in zip(self.output, laterals)]


class BackboneFPN(FPNNeck):
    """The backbone stages at `strides` -> FPN levels of `channels` each, finest first.

    Stages are picked by stride, not index, because timm numbers stages differently per
    family (a ResNet's stage 0 is stride 2, a ConvNeXt's is stride 4). `num_outputs` keeps
    only the finest levels as outputs; `backbone_kwargs` reach timm (e.g. a reduced ConvNeXt).
    """

    def __init__(
        self,
        backbone: str,
        strides: tuple[int, ...],
        channels: int,
        raw_strides: tuple[int, ...] = (),
        num_outputs: int | None = None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        kwargs = dict(backbone_kwargs or {})
        probe = timm.create_model(backbone, pretrained=False, features_only=True, **kwargs)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in (*strides, *raw_strides) if s not in reductions]
        if missing:
            raise ValueError(f"timm backbone {backbone!r} has no stage at stride {missing} (it has {reductions})")
        wanted = sorted(set(strides) | set(raw_strides))
        body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=tuple(reductions.index(s) for s in wanted), **kwargs)
        got = list(body.feature_info.reduction())
        fpn_at = [got.index(s) for s in strides]  # positions in the body's outputs
        nn.Module.__init__(self)
        # the body is registered before the convs: parameter order is what optimizer states
        # saved by earlier runs are indexed by, so a resumed run must see the same order
        self.body = body
        self._add_convs([body.feature_info.channels()[i] for i in fpn_at], channels, num_outputs)
        self._fpn_at = fpn_at
        self._raw_at = [got.index(s) for s in raw_strides]
        self.strides: list[int] = list(strides[: len(self.output)])
        #: channels of all backbone stages the body returns, and of those at `raw_strides`
        self.body_channels: list[int] = list(body.feature_info.channels())
        self.raw_channels: list[int] = [self.body_channels[i] for i in self._raw_at]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pyramid(self.body(x))

    def forward_with_raw(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """FPN levels and the raw backbone stages at `raw_strides`, from one backbone pass."""
        feats = self.body(x)
        return self.pyramid(feats), [feats[i] for i in self._raw_at]

    def pyramid(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """FPN levels from the body's outputs (kept separate so callers can reuse `feats`)."""
        return self.top_down([feats[i] for i in self._fpn_at])
