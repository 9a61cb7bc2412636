"""`build_segmentor`: one registry for official SAM sizes and light variants, as in SAM's `build_sam`.

All variants share SAM's PromptEncoder and MaskDecoder from `segment-anything`; only the
image encoder (and the decoder width for light variants) changes, so switching is a
config choice. The crop is `crop_size` px at native resolution (no resize to 1024).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from ..config import SegmentorConfig
from .encoders import CNNImageEncoder
from .high_res import HighResMaskDecoder, ImageEmbedding

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class Segmentor(nn.Module):
    """SAM's three parts under their official attribute names (so official keys load)."""

    def __init__(self, image_encoder: nn.Module, embed_dim: int, stride: int, config: SegmentorConfig, decoder: MaskDecoder) -> None:
        super().__init__()
        size = config.crop_size
        if size % stride:
            raise ValueError(f"crop_size {size} must be a multiple of the encoder stride {stride}")
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim, image_embedding_size=(size // stride, size // stride), input_image_size=(size, size), mask_in_chans=16
        )
        self.mask_decoder = decoder
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def crop_size(self) -> int:
        return self.config.crop_size

    def embed(self, images: torch.Tensor) -> torch.Tensor | ImageEmbedding:
        """(B, 3, S, S) RGB 0..255 -> image embeddings (B, C, S/stride, S/stride), with the fine
        features beside them for a high-resolution decoder; slice either as `emb[i : i + 1]`."""
        if images.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"segmentor crops must be {self.crop_size}x{self.crop_size}, got {tuple(images.shape[-2:])}")
        return self.image_encoder((images.float() - self.pixel_mean) / self.pixel_std)

    def decode(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for P prompt sets against one image embedding (1, C, h, w).

        coords (P, 1+K, 2) crop pixels, labels (P, 1+K). Returns crop-size logits (P, S, S)
        and predicted IoU (P,); masks come at stride 4 (SAM) or 2 (`high_res`), upsampled.
        """
        sparse, dense = self.prompt_encoder(points=(coords.float(), labels), boxes=None, masks=None)
        fine = {"fine": embedding.fine} if isinstance(embedding, ImageEmbedding) else {}
        low_res, iou = self.mask_decoder(
            image_embeddings=embedding.main if fine else embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            **fine,
        )
        logits = F.interpolate(low_res, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
        return logits[:, 0], iou[:, 0]


def _decoder(dim: int, depth: int = 2, mlp_dim: int = 2048, fine_channels: tuple[int, ...] = ()) -> MaskDecoder:
    """SAM's mask decoder at width `dim`; the high-resolution one when fine features come with it."""
    kwargs = dict(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=8),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256 if dim >= 256 else dim,
    )
    return HighResMaskDecoder(fine_channels=fine_channels, **kwargs) if fine_channels else MaskDecoder(**kwargs)


def _official(
    config: SegmentorConfig, embed_dim: int, depth: int, heads: int, global_attn: tuple[int, ...],
    window: int = 14, out_dim: int = 256, decoder_depth: int = 2, decoder_mlp_dim: int = 2048,
) -> Segmentor:
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=config.crop_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=window,
        out_chans=out_dim,
    )
    return Segmentor(encoder, out_dim, 16, config, _decoder(out_dim, decoder_depth, decoder_mlp_dim))


def _official_sized(config: SegmentorConfig) -> Segmentor:
    """SAM's architecture at the sizes in `config` (read off a checkpoint by `official_config`)."""
    return _official(
        config, config.vit_dim, config.vit_depth, config.vit_heads, tuple(config.vit_global_attn),
        config.vit_window, config.embed_dim, config.decoder_depth, config.decoder_mlp_dim,
    )


def _vit_light(config: SegmentorConfig) -> Segmentor:
    depth = config.vit_depth
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=config.vit_dim,
        img_size=config.crop_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=config.vit_heads,
        patch_size=config.encoder_stride,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(range(1, depth, 2)),
        window_size=8,
        out_chans=config.embed_dim,
    )
    return Segmentor(encoder, config.embed_dim, config.encoder_stride, config, _decoder(config.embed_dim, config.decoder_depth, config.decoder_mlp_dim))


def _cnn_light(config: SegmentorConfig) -> Segmentor:
    encoder = CNNImageEncoder(config.encoder_name, config.encoder_stride, config.embed_dim, fine_strides=(2, 4) if config.high_res else ())
    decoder = _decoder(config.embed_dim, config.decoder_depth, config.decoder_mlp_dim, encoder.fine_channels)
    return Segmentor(encoder, config.embed_dim, config.encoder_stride, config, decoder)


SEGMENTOR_REGISTRY: dict[str, Callable[[SegmentorConfig], Segmentor]] = {
    "sam_vit_b": partial(_official, embed_dim=768, depth=12, heads=12, global_attn=(2, 5, 8, 11)),
    "sam_vit_l": partial(_official, embed_dim=1024, depth=24, heads=16, global_attn=(5, 11, 17, 23)),
    "sam_vit_h": partial(_official, embed_dim=1280, depth=32, heads=16, global_attn=(7, 15, 23, 31)),
    "sam_vit": _official_sized,
    "sam_vit_light": _vit_light,
    "sam_cnn_light": _cnn_light,
}


def build_segmentor(config: SegmentorConfig) -> Segmentor:
    try:
        builder = SEGMENTOR_REGISTRY[config.arch]
    except KeyError:
        raise ValueError(f"unknown segmentor arch {config.arch!r}; choose one of {', '.join(SEGMENTOR_REGISTRY)}") from None
    return builder(config)
