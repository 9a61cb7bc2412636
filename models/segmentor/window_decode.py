"""Inference-only decoding of all of one window's prompts: image tokens shared, masks kept in boxes.

`Segmentor.decode` (the training path, and the reference) copies the window's image tokens
and their positional encoding once per prompt (`repeat_interleave`) and upsamples every
prompt's mask over the whole window. Here the two-way transformer gets the image tokens once
(batch 1): until the first image-to-token attention updates them they are the same for every
prompt, so the first layer's image-side projections (keys and values of the token-to-image
attention, queries of the image-to-token attention) run once per window instead of once per
prompt; broadcasting in SAM's own `Attention` does the rest, with the official modules and
weights unchanged. Masks leave the decoder at stride 2 (or 4) and are upsampled only inside a
box around the pixels that can pass the threshold, which bilinear interpolation makes exact:
an upsampled pixel is a convex combination of its (up to) four source pixels, so it can pass
only where one of them is above the threshold (`MARGIN` absorbs float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

from .build import Segmentor
from .high_res import HighResMaskDecoder, ImageEmbedding

#: low-resolution pixels within this of the threshold still open a box (float rounding of the
#: interpolation's convex combination is far below it for logits of ordinary size)
MARGIN = 1e-3


@dataclass
class MaskCrop:
    """One prompt's window-size logits inside its box: `logits` (h, w) at window px (x, y).

    Outside the box every logit is at or below the threshold the box was made for, so the
    crop stands for the whole window's mask."""

    logits: np.ndarray
    x: int
    y: int

    def above(self, threshold: float) -> np.ndarray:
        return self.logits > threshold

    def paste(self, size: int, threshold: float) -> np.ndarray:
        """The (size, size) boolean mask of the window."""
        out = np.zeros((size, size), bool)
        h, w = self.logits.shape
        out[self.y : self.y + h, self.x : self.x + w] = self.logits > threshold
        return out

    def at(self, x: int, y: int) -> float:
        """The logit at window pixel (x, y); -inf outside the box (below any threshold)."""
        h, w = self.logits.shape
        cx, cy = x - self.x, y - self.y
        return float(self.logits[cy, cx]) if 0 <= cx < w and 0 <= cy < h else -np.inf


@torch.inference_mode()
def low_res_masks(
    segmentor: Segmentor, embedding: torch.Tensor | ImageEmbedding, coords: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stride-2 (high-res decoder) or stride-4 (SAM's) mask logits (P, n, n) and IoU (P,) of
    P prompt sets against one window's embedding (batch 1), as `Segmentor.decode` gives before
    its upsampling; the image tokens are not copied per prompt."""
    dec = segmentor.mask_decoder
    pe = segmentor.prompt_encoder
    sparse, dense = pe(points=(coords.float(), labels), boxes=None, masks=None)
    high_res = isinstance(embedding, ImageEmbedding)
    image = embedding.main if high_res else embedding
    if image.shape[0] != 1:
        raise ValueError("decode one window's prompts at a time (emb[i : i + 1])")
    p = sparse.shape[0]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).unsqueeze(0).expand(p, -1, -1)
    tokens = torch.cat((out_tokens, sparse), dim=1)
    src = image + dense[:1]  # no mask prompt: the dense embedding is one learnt vector, the same for every prompt
    hs, keys = dec.transformer(src, pe.get_dense_pe(), tokens)  # keys become per prompt at the first image update
    _, c, h, w = image.shape
    src = keys.expand(p, -1, -1).transpose(1, 2).reshape(p, c, h, w)
    hyper = dec.output_hypernetworks_mlps[0](hs[:, 1, :])  # the single-mask output: mask token 0
    iou = dec.iou_prediction_head(hs[:, 0, :])[:, 0]
    if high_res:
        if not isinstance(dec, HighResMaskDecoder):
            raise TypeError("fine features came with the embedding but the decoder is not a HighResMaskDecoder")
        f2, f4 = embedding.fine
        stride4 = dec.output_upscaling(src) + dec.fuse_stride4(f4)
        return dec._stride2_masks(hyper, stride4, dec.fuse_stride2(f2)[0])[:, 0], iou
    if not isinstance(dec, MaskDecoder):
        raise TypeError(f"unsupported mask decoder {type(dec).__name__}")
    up = dec.output_upscaling(src)
    _, cu, hu, wu = up.shape
    return (hyper.unsqueeze(1) @ up.reshape(p, cu, hu * wu)).reshape(p, hu, wu), iou


def boxed_upsample(low: torch.Tensor, size: int, threshold: float) -> list[MaskCrop]:
    """Each of (P, n, n) low-resolution logits upsampled to `size` (bilinear, as
    `Segmentor.decode`) only inside the box where it can pass `threshold`.

    The crop is upsampled with a margin of source pixels and the outputs that the crop's own
    edge would clamp are trimmed, so each kept pixel is computed from the same four source
    pixels with the same weights as in the whole-window upsampling: the values are the same.
    """
    low = low.detach().float().cpu()
    p, n = low.shape[0], low.shape[-1]
    s = size // n if n else 0
    if p == 0:
        return []
    if n * s != size or (s > 1 and s % 2):  # a scale this rule does not cover: whole windows, then boxes
        full = F.interpolate(low.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return [_box_of(full[i].numpy(), threshold) for i in range(p)]
    above = low > threshold - MARGIN
    rows, cols = above.any(2), above.any(1)
    has = rows.any(1).tolist()
    r0, c0 = rows.float().argmax(1).tolist(), cols.float().argmax(1).tolist()
    r1 = (n - 1 - rows.flip(1).float().argmax(1)).tolist()
    c1 = (n - 1 - cols.flip(1).float().argmax(1)).tolist()
    half = s // 2
    out = []
    for i in range(p):
        if not has[i]:
            out.append(MaskCrop(np.zeros((0, 0), np.float32), 0, 0))
            continue
        a_r, b_r, a_c, b_c = max(r0[i] - 2, 0), min(r1[i] + 3, n), max(c0[i] - 2, 0), min(c1[i] + 3, n)
        crop = low[i, a_r:b_r, a_c:b_c]
        if s > 1:
            crop = F.interpolate(
                crop[None, None], size=(s * (b_r - a_r), s * (b_c - a_c)), mode="bilinear", align_corners=False
            )[0, 0]
        top, left = (half if a_r > 0 else 0), (half if a_c > 0 else 0)
        bottom, right = crop.shape[0] - (half if b_r < n else 0), crop.shape[1] - (half if b_c < n else 0)
        out.append(MaskCrop(np.ascontiguousarray(crop[top:bottom, left:right].numpy()), s * a_c + left, s * a_r + top))
    return out


def _box_of(logits: np.ndarray, threshold: float) -> MaskCrop:
    ys, xs = np.nonzero(logits > threshold)
    if len(ys) == 0:
        return MaskCrop(np.zeros((0, 0), np.float32), 0, 0)
    return MaskCrop(
        np.ascontiguousarray(logits[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]), int(xs.min()), int(ys.min())
    )


def full_crops(logits: torch.Tensor) -> list[MaskCrop]:
    """Whole-window logits (P, S, S) as crops that cover the window (the reference path)."""
    arr = logits.detach().float().cpu().numpy()
    return [MaskCrop(arr[i], 0, 0) for i in range(arr.shape[0])]
