"""A high-resolution mask path for the light segmentor (HQ-SAM-style fusion of early features).

SAM's decoder predicts masks at stride 4 of its input (64x64 for a 256-px crop), coarse for
nuclei 20-40 px across. `HighResMaskDecoder` adds the image encoder's own stride-4 and
stride-2 features to the decoder's upscaled mask features and predicts at stride 2. Every
added branch ends in a zero-initialised layer, so a decoder warm-started from a stride-4 one
first predicts what it predicted (bilinear-upsampled) and training only adds detail. The
official SAM ViT-B/L/H path does not use this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder
from torch import nn


@dataclass
class ImageEmbedding:
    """SAM's image embedding plus the fine features of the same images, sliced together."""

    main: torch.Tensor  # (B, C, S/16, S/16)
    fine: tuple[torch.Tensor, ...]  # (B, c2, S/2, S/2), (B, c4, S/4, S/4)

    def __getitem__(self, index) -> "ImageEmbedding":
        return ImageEmbedding(self.main[index], tuple(f[index] for f in self.fine))

    def __len__(self) -> int:
        return len(self.main)


def _zero_branch(in_ch: int, out_ch: int) -> nn.Sequential:
    """conv3x3 -> GELU -> conv1x1 whose weights start at zero (adds nothing until trained)."""
    last = nn.Conv2d(out_ch, out_ch, 1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.GELU(), last)


class HighResMaskDecoder(MaskDecoder):
    """SAM's MaskDecoder with stride-4 and stride-2 encoder features fused into its mask features.

    Only the single-mask output is computed (the one-prompt-one-nucleus setting never asks
    for SAM's three ambiguity masks), which also spares three hypernetwork MLPs per prompt.
    """

    def __init__(self, *, fine_channels: tuple[int, int], **kwargs) -> None:
        super().__init__(**kwargs)
        dim = self.transformer_dim // 8
        c2, c4 = fine_channels
        self.fuse_stride4 = _zero_branch(c4, dim)
        self.fuse_stride2 = _zero_branch(c2, dim)
        self.upscale_stride2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        nn.init.zeros_(self.upscale_stride2.weight)
        nn.init.zeros_(self.upscale_stride2.bias)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output: bool, fine: tuple[torch.Tensor, ...] = ()):
        if multimask_output:
            raise ValueError("HighResMaskDecoder predicts one mask per prompt (multimask_output=False)")
        if len(fine) != 2:
            raise ValueError("HighResMaskDecoder needs the encoder's stride-2 and stride-4 features")
        if fine[0].shape[0] != 1:
            raise ValueError("decode prompts against one image's embedding at a time (emb[i : i + 1])")
        tokens_out = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens_out = tokens_out.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((tokens_out, sparse_prompt_embeddings), dim=1)
        n = tokens.shape[0]
        src = torch.repeat_interleave(image_embeddings, n, dim=0) + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        f2, f4 = fine
        stride4 = self.output_upscaling(src) + self.fuse_stride4(f4)  # (P, d, S/4, S/4); fine part broadcast
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1, :])  # (P, d)
        return self._stride2_masks(hyper, stride4, self.fuse_stride2(f2)[0]), self.iou_prediction_head(hs[:, 0, :])[:, :1]

    def _stride2_masks(self, hyper: torch.Tensor, stride4: torch.Tensor, fine2: torch.Tensor) -> torch.Tensor:
        """hyper . (bilinear2x(stride4) + convT(stride4) + fine2), without the (P, d, S/2, S/2) tensor.

        Every term is linear in the mask features, so the hypernetwork vector is applied first
        (at stride 4, or to the shared fine map), which keeps the cost near SAM's own decoder.
        """
        p, d, h, w = stride4.shape
        flat = stride4.reshape(p, d, h * w)
        coarse = (hyper.unsqueeze(1) @ flat).reshape(p, 1, h, w)
        masks = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        conv = self.upscale_stride2  # weight (d_in, d_out, 2, 2): out[2i+a, 2j+b] = W[:, :, a, b]^T x[i, j] + bias
        folded = torch.einsum("ioab,po->pabi", conv.weight, hyper).reshape(p, 4, d)
        sub = (folded @ flat).reshape(p, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(p, 1, 2 * h, 2 * w)
        detail = (hyper @ fine2.reshape(d, -1)).reshape(p, 1, 2 * h, 2 * w)
        return masks + sub + detail + (hyper @ conv.bias).view(p, 1, 1, 1)
