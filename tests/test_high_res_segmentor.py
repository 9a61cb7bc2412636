"""The light segmentor's high-resolution mask path (models/segmentor/high_res.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptnucseg.models.checkpoints import CheckpointError
from promptnucseg.models.config import SegmentorConfig
from promptnucseg.models.segmentor import build_segmentor
from promptnucseg.models.segmentor.high_res import ImageEmbedding
from promptnucseg.models.segmentor.warm_start import HIGH_RES_KEYS, warm_start

def stride2_masks_plainly(dec, hyper, stride4, fine2):
    """The decoder's stride-2 masks computed the plain way: features at stride 2, then the dot."""
    feats = F.interpolate(stride4, scale_factor=2, mode="bilinear", align_corners=False) + dec.upscale_stride2(stride4) + fine2
    p, d, h, w = feats.shape
    return (hyper.unsqueeze(1) @ feats.reshape(p, d, h * w)).reshape(p, 1, h, w)


SMALL = dict(arch="sam_cnn_light", embed_dim=64, decoder_mlp_dim=128, encoder_stride=16)


def test_folded_stride2_masks_equal_the_plain_computation():
    torch.manual_seed(0)
    seg = build_segmentor(SegmentorConfig(**SMALL, high_res=True)).eval()
    dec = seg.mask_decoder
    for module in (dec.upscale_stride2, dec.fuse_stride2[2]):  # leave zero init so every term counts
        torch.nn.init.normal_(module.weight, std=0.2)
        torch.nn.init.normal_(module.bias, std=0.2)
    d = dec.transformer_dim // 8
    hyper, stride4, fine2 = torch.randn(5, d), torch.randn(5, d, 16, 16), torch.randn(d, 32, 32)
    got = dec._stride2_masks(hyper, stride4, fine2)
    want = stride2_masks_plainly(dec, hyper, stride4, fine2[None])
    assert got.shape == (5, 1, 32, 32)
    assert torch.allclose(got, want, atol=1e-4)


def test_high_res_segmentor_decodes_at_stride_2_and_slices_its_embedding():
    torch.manual_seed(0)
    seg = build_segmentor(SegmentorConfig(**SMALL, high_res=True)).eval()
    with torch.no_grad():
        emb = seg.embed(torch.randint(0, 255, (2, 3, 256, 256)))
        assert isinstance(emb, ImageEmbedding) and len(emb) == 2
        assert [tuple(f.shape[-2:]) for f in emb[1:2].fine] == [(128, 128), (64, 64)]
        logits, iou = seg.decode(emb[1:2], torch.rand(4, 2, 2) * 255, torch.tensor([[1, 0]] * 4))
        assert logits.shape == (4, 256, 256) and iou.shape == (4,)
        with pytest.raises(ValueError, match="one image"):
            seg.decode(emb, torch.rand(4, 2, 2) * 255, torch.tensor([[1, 0]] * 4))


def test_warm_start_from_a_stride4_segmentor_starts_where_it_was(tmp_path):
    torch.manual_seed(0)
    old = build_segmentor(SegmentorConfig(**SMALL)).eval()
    path = tmp_path / "seg.pt"
    torch.save({"format": "promptnucseg", "kind": "segmentor", "state_dict": old.state_dict()}, path)
    new = build_segmentor(SegmentorConfig(**SMALL, high_res=True)).eval()
    fresh = warm_start(new, path)
    assert fresh and all(k.startswith(HIGH_RES_KEYS) for k in fresh)
    x = torch.randint(0, 255, (1, 3, 256, 256))
    coords, labels = torch.rand(6, 2, 2) * 255, torch.tensor([[1, 0]] * 6)
    with torch.no_grad():
        sparse, dense = old.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        stride4, ia = old.mask_decoder(old.embed(x), old.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
        b, ib = new.decode(new.embed(x), coords, labels)
    assert torch.allclose(ia[:, 0], ib, atol=1e-5)
    # zero-initialised branches: the old stride-4 masks, upsampled 2x and then to the crop
    up = F.interpolate(stride4, scale_factor=2, mode="bilinear", align_corners=False)
    want = F.interpolate(up, size=(256, 256), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(b, want, atol=1e-5)


def test_warm_start_refuses_a_segmentor_of_another_width(tmp_path):
    other = build_segmentor(SegmentorConfig(**{**SMALL, "embed_dim": 32, "decoder_mlp_dim": 64}))
    path = tmp_path / "other.pt"
    torch.save({"format": "promptnucseg", "kind": "segmentor", "state_dict": other.state_dict()}, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        warm_start(build_segmentor(SegmentorConfig(**SMALL, high_res=True)), path)
    junk = tmp_path / "junk.pt"
    torch.save({"weight": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="neither an official SAM"):
        warm_start(build_segmentor(SegmentorConfig(**SMALL)), junk)


def test_warm_start_by_parts_puts_an_old_decoder_on_a_new_encoder(tmp_path):
    torch.manual_seed(0)
    old = build_segmentor(SegmentorConfig(**SMALL, high_res=True))
    path = tmp_path / "seg.pt"
    torch.save({"format": "promptnucseg", "kind": "segmentor", "state_dict": old.state_dict()}, path)
    new = build_segmentor(SegmentorConfig(**{**SMALL, "encoder_name": "efficientnet_lite0"}, high_res=True))
    before = {k: v.clone() for k, v in new.state_dict().items()}
    parts = ("prompt_encoder", "mask_decoder.transformer", "mask_decoder.iou_prediction_head")
    fresh = warm_start(new, path, parts)
    after = new.state_dict()
    taken = [k for k in after if k.startswith(parts)]
    assert taken and all(torch.equal(after[k], old.state_dict()[k]) for k in taken)
    assert set(fresh) == set(after) - set(taken) and all(torch.equal(after[k], before[k]) for k in fresh)
    # the stride-4 fusing branch reads the encoder's channels: another encoder cannot take it
    with pytest.raises(CheckpointError, match="do not fit"):
        warm_start(new, path, ("mask_decoder.fuse_stride4",))
    with pytest.raises(CheckpointError, match="no segmentor tensor"):
        warm_start(new, path, ("no_such_part",))
