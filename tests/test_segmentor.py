"""Segmentor: negative prompts, losses, registry, and official SAM checkpoints."""
import numpy as np
import pytest
import torch

from promptnucseg.models.checkpoints import CheckpointError
from promptnucseg.models.config import SegmentorConfig
from promptnucseg.models.segmentor import SEGMENTOR_REGISTRY, assemble_prompts, build_segmentor, knn_negatives
from promptnucseg.models.segmentor.losses import dice_loss, mask_iou, segmentor_loss
from promptnucseg.models.segmentor.official import init_from_official


def test_knn_negatives_exclude_self_and_pad():
    pts = np.array([[0, 0], [1, 0], [10, 0]], np.float32)
    assert knn_negatives(pts, 1).tolist() == [[1], [0], [1]]
    assert knn_negatives(pts, 3).tolist() == [[1, 2, -1], [0, 2, -1], [1, 0, -1]]
    assert knn_negatives(pts[:1], 2).tolist() == [[-1, -1]]


def test_assemble_prompts_labels():
    pos = np.array([[5, 5], [20, 20]], np.float32)
    pool = np.array([[6, 6], [21, 21]], np.float32)
    coords, labels = assemble_prompts(pos, pool, np.array([[1, -1], [0, -1]]))
    assert labels.tolist() == [[1, 0, -1], [1, 0, -1]]
    assert coords[0].tolist() == [[5, 5], [21, 21], [0, 0]]
    assert coords[1, 1].tolist() == [6, 6]


def test_mask_losses_on_perfect_and_inverted_predictions():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    perfect = target * 20 - 10
    assert float(mask_iou(perfect, target)) == 1.0
    assert float(dice_loss(perfect, target)) < 1e-3
    assert float(mask_iou(-perfect, target)) == 0.0
    cfg = SegmentorConfig()
    good = segmentor_loss(perfect, torch.tensor([1.0]), target, cfg)["loss"]
    bad = segmentor_loss(-perfect, torch.tensor([1.0]), target, cfg)["loss"]
    assert good < 0.01 < 1.0 < bad


def test_fused_focal_dice_equals_the_autograd_definitions():
    """`segmentor_loss`'s hand-written focal + dice gives the reference functions' values and
    gradients (float64, so only the algebra is compared), logits far out in both tails included."""
    from promptnucseg.models.segmentor.losses import _FocalDice, sigmoid_focal

    torch.manual_seed(0)
    x = (torch.randn(5, 300, dtype=torch.float64) * 6).requires_grad_()
    with torch.no_grad():
        x[0, :4] = torch.tensor([40.0, -40.0, 80.0, -80.0], dtype=torch.float64)
    t = (torch.rand(5, 300, dtype=torch.float64) > 0.8).double()
    t[1] = 0  # a mask with no target pixel
    want_f, want_d = sigmoid_focal(x, t).mean(), dice_loss(x, t).mean()
    g_want = torch.autograd.grad(20 * want_f + want_d, x)[0]
    got_f, got_d = _FocalDice.apply(x, t, 0.25)
    g_got = torch.autograd.grad(20 * got_f + got_d, x)[0]
    assert torch.allclose(got_f, want_f, rtol=1e-10) and torch.allclose(got_d, want_d, rtol=1e-10)
    assert torch.allclose(g_got, g_want, rtol=1e-8, atol=1e-15)
    assert torch.autograd.gradcheck(lambda v: _FocalDice.apply(v, t[:2, :20], 0.25), (x[:2, :20].detach().clone().requires_grad_(),))


@pytest.mark.parametrize("arch", ["sam_cnn_light", "sam_vit_light"])
def test_light_variants_decode_many_prompts_per_embedding(arch):
    torch.manual_seed(0)
    seg = build_segmentor(SegmentorConfig(arch=arch, embed_dim=64, decoder_mlp_dim=128, vit_dim=64, vit_depth=2, vit_heads=2)).eval()
    with torch.no_grad():
        emb = seg.embed(torch.randint(0, 255, (2, 3, 256, 256)))
        coords = torch.rand(7, 2, 2) * 255
        labels = torch.tensor([[1, 0]] * 7)
        logits, iou = seg.decode(emb[:1], coords, labels)
    assert logits.shape == (7, 256, 256) and iou.shape == (7,)


def test_unknown_arch_lists_the_registry():
    with pytest.raises(ValueError, match="sam_vit_b"):
        build_segmentor(SegmentorConfig(arch="sam_vit_x"))
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(SEGMENTOR_REGISTRY)


@pytest.mark.slow
def test_official_sam_vit_b_layout_loads_with_no_missing_keys(tmp_path):
    """A checkpoint in the official key layout (1024-px SAM, as segment-anything builds it) loads at 256 px."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = sam_model_registry["vit_b"](checkpoint=None)
    state = official.state_dict()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    ours = build_segmentor(SegmentorConfig(arch="sam_vit_b"))
    init_from_official(ours, str(path))  # raises on any missing/unexpected key
    got = ours.state_dict()
    assert got["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    assert torch.equal(got["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"])
    assert torch.equal(got["image_encoder.blocks.0.attn.qkv.weight"], state["image_encoder.blocks.0.attn.qkv.weight"])
    # a global-attention block's relative-position table was resized 127 -> 31
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].shape[0] == 127
    assert got["image_encoder.blocks.2.attn.rel_pos_h"].shape[0] == 31
    with torch.no_grad():
        emb = ours.eval().embed(torch.randint(0, 255, (1, 3, 256, 256)))
    assert emb.shape == (1, 256, 16, 16)


def test_wrong_files_for_official_sam_are_refused_clearly(tmp_path):
    seg = build_segmentor(SegmentorConfig(arch="sam_cnn_light", embed_dim=32, decoder_mlp_dim=64))
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
        init_from_official(seg, str(text))
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not an official SAM checkpoint"):
        init_from_official(seg, str(other))
    with pytest.raises(CheckpointError, match="no such weights file"):
        init_from_official(seg, str(tmp_path / "missing.pth"))
