"""Prompter pieces on cases whose right answer is known by hand."""
import numpy as np
import pytest
import torch

from promptnucseg.models.config import PrompterConfig
from promptnucseg.models.prompter import Prompter, select_prompts
from promptnucseg.models.prompter.losses import PrompterTargets, binary_focal_loss, prompter_loss
from promptnucseg.models.prompter.matching import match_anchors
from promptnucseg.models.prompter.network import anchor_grid
from promptnucseg.models.prompter.postprocess import point_nms


def test_anchor_grid_is_offset_by_half_a_step():
    a = anchor_grid(32, 48, 16)
    assert a.shape == (2 * 3, 2)
    assert a[0].tolist() == [8.0, 8.0] and a[-1].tolist() == [40.0, 24.0]


def test_hungarian_picks_nearest_when_classes_agree():
    points = torch.tensor([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]])
    logits = torch.zeros(3, 2)  # equal class probabilities: distance decides
    gt = torch.tensor([[99.0, 99.0], [9.0, 1.0]])
    ai, gi = match_anchors(points, logits, gt, torch.tensor([0, 0]), 0.1)
    assert dict(zip(gi.tolist(), ai.tolist())) == {0: 2, 1: 1}


def test_hungarian_prefers_confident_anchor_over_slightly_nearer_one():
    # anchor 0 is 1 px nearer (cost 0.1 less) but its class probability is ~0.0 vs ~1.0
    points = torch.tensor([[5.0, 0.0], [6.0, 0.0]])
    logits = torch.tensor([[-10.0, 10.0], [10.0, -10.0]])
    ai, gi = match_anchors(points, logits, torch.tensor([[5.0, 0.0]]), torch.tensor([0]), 0.1)
    assert ai.tolist() == [1]


def test_matching_with_no_ground_truth():
    ai, gi = match_anchors(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 0.1)
    assert len(ai) == len(gi) == 0


def test_focal_loss_is_small_for_confident_right_answers_and_large_for_wrong():
    target = torch.tensor([1.0, 0.0])
    right = binary_focal_loss(torch.tensor([8.0, -8.0]), target)
    wrong = binary_focal_loss(torch.tensor([-8.0, 8.0]), target)
    assert right < 1e-6 < 1.0 < wrong


def test_point_nms_keeps_best_in_each_cluster():
    pts = np.array([[0, 0], [5, 0], [30, 0], [31, 0], [60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.3, 0.1], np.float32)
    assert sorted(point_nms(pts, scores, 11.0).tolist()) == [1, 2, 4]


def test_select_prompts_drops_background_outside_and_mask_filtered_points():
    points = torch.tensor([[4.0, 4.0], [20.0, 4.0], [40.0, 4.0], [-3.0, 4.0]])
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])  # anchor 1 is background
    mask = torch.full((32, 48), 5.0)
    mask[:, 36:] = -5.0  # the foreground head says anchor 2 sits on background
    p = select_prompts(points, logits, mask, (32, 48), 11.0)
    assert p.points.tolist() == [[4.0, 4.0]]
    p_nofilter = select_prompts(points, logits, None, (32, 48), 11.0)
    assert len(p_nofilter.points) == 2


@pytest.fixture(scope="module")
def small_prompter():
    torch.manual_seed(0)
    return Prompter(PrompterConfig(backbone="resnet18", fpn_channels=32))


def test_prompter_shapes_and_padding(small_prompter):
    x = small_prompter.normalize(torch.randint(0, 255, (2, 3, 70, 50)).float())
    assert x.shape[-2:] == (96, 64)  # padded to a multiple of lcm(16, 32)
    out = small_prompter(x)
    assert out.points.shape == (2, 6 * 4, 2) and out.logits.shape == (2, 24, 2)
    assert out.mask_logits.shape == (2, 1, 96, 64)


def test_prompter_loss_falls_when_fitting_one_batch(small_prompter):
    torch.manual_seed(0)
    model = small_prompter.train()
    x = model.normalize(torch.randint(0, 255, (2, 3, 64, 64)).float())
    gt = [torch.tensor([[10.0, 12.0], [40.0, 50.0]]), torch.tensor([[30.0, 30.0]])]
    fg = torch.zeros(2, 1, 64, 64)
    fg[0, :, 5:20, 5:20] = 1
    targets = PrompterTargets(gt, [torch.zeros(2, dtype=torch.long), torch.zeros(1, dtype=torch.long)], fg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = prompter_loss(model(x), targets, model.config)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_stride_is_refused():
    with pytest.raises(ValueError, match="stride"):
        Prompter(PrompterConfig(backbone="resnet18", strides=(8, 16)))


def test_parameter_order_is_that_of_the_saved_models():
    """Optimizer states (a resumed run's last.pt) are indexed by parameter order: a refactor
    that registers modules in another order breaks every resume, so pin it to the bundled file."""
    from promptnucseg.models.loading import _load_bundle
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    prompter, segmentor, _, _ = _load_bundle(BUNDLED_WEIGHTS)
    saved = torch.load(BUNDLED_WEIGHTS, map_location="cpu", weights_only=True)
    for net, key in ((prompter, "prompter"), (segmentor, "segmentor")):
        names = [n for n, _ in net.named_parameters()]
        assert [k for k in saved[key] if k in set(names)] == names


def test_a_prompter_warm_starts_from_a_model_file_and_refuses_another_shape(tmp_path):
    from promptnucseg.models.checkpoints import CheckpointError
    from promptnucseg.models.loading import _load_bundle
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS
    from promptnucseg.models.prompter.warm_start import warm_start_prompter

    shipped, _, config, _ = _load_bundle(BUNDLED_WEIGHTS)
    fresh = Prompter(config.prompter)
    warm_start_prompter(fresh, BUNDLED_WEIGHTS)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), shipped.state_dict().values()))
    other = Prompter(PrompterConfig(backbone="resnet18", fpn_channels=64))
    with pytest.raises(CheckpointError, match="does not fit this config"):
        warm_start_prompter(other, BUNDLED_WEIGHTS)


def _seeded_by_the_bundled_prompter(**changes):
    """The bundled prompter, one built from its config with `changes` and warm-started from it
    (both in eval mode), and a seeded random 128-px input."""
    from dataclasses import replace

    from promptnucseg.models.loading import _load_bundle
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS
    from promptnucseg.models.prompter.warm_start import warm_start_prompter

    shipped, _, config, _ = _load_bundle(BUNDLED_WEIGHTS)
    seeded = Prompter(replace(config.prompter, **changes))
    warm_start_prompter(seeded, BUNDLED_WEIGHTS)
    shipped.eval()
    seeded.eval()
    torch.manual_seed(0)
    return shipped, seeded, shipped.normalize(torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8))


def test_a_one_class_prompter_seeds_a_typed_one_with_the_same_prompts():
    """Warm-starting four classes from the bundled one-class prompter: every tensor but the class
    head is loaded as it is, and at step 0 the typed prompter keeps exactly the same anchors
    (argmax not background), each now a tie between the four classes."""
    from promptnucseg.models.prompter.postprocess import candidate_prompts

    shipped, typed, x = _seeded_by_the_bundled_prompter(num_classes=4)
    with torch.no_grad():
        a, b = shipped(x), typed(x)
    assert b.logits.shape[-1] == 5
    assert torch.allclose(b.logits[..., :4], a.logits[..., :1].expand(-1, -1, 4)) and torch.equal(b.logits[..., 4], a.logits[..., 1])
    pa, pb = (candidate_prompts(o.points[0], o.logits[0], o.mask_logits[0, 0], (128, 128)) for o in (a, b))
    assert len(pa.points) > 0 and np.array_equal(pa.points, pb.points)


def test_a_head_only_run_freezes_the_rest_in_eval_mode():
    """`train.trainable: [class_head]`: only the class head gets gradients, BatchNorm elsewhere
    keeps its statistics (eval mode) while the head's dropout still trains; a prefix that names
    nothing is refused."""
    from promptnucseg.models.training.loop import freeze_all_but

    model = Prompter(PrompterConfig(backbone="resnet18", fpn_channels=32, num_classes=4)).train()
    freeze_all_but(model, ["class_head"])
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"class_head"}
    assert model.class_head.training and model.class_head[2].training
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = model(model.normalize(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)))
    out.logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("class_head"))
    assert model.class_head[3].weight.grad is not None
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="names no parameter"):
        freeze_all_but(model, ["classifier"])


def test_class_weights_scale_the_classification_loss_of_their_class_only():
    from promptnucseg.models.prompter.network import PrompterOutput

    torch.manual_seed(0)
    out = PrompterOutput(points=torch.tensor([[[8.0, 8.0], [24.0, 8.0]]]), logits=torch.randn(1, 2, 3), mask_logits=torch.zeros(1, 1, 16, 32),
                         anchors=torch.tensor([[8.0, 8.0], [24.0, 8.0]]))
    targets = PrompterTargets([torch.tensor([[8.0, 8.0]])], [torch.tensor([0])], torch.zeros(1, 1, 16, 32))
    plain = PrompterConfig(num_classes=2)
    cls = lambda cfg: float(prompter_loss(out, targets, cfg)["cls"])  # noqa: E731
    assert cls(PrompterConfig(num_classes=2, class_weights=(1.0, 1.0))) == pytest.approx(cls(plain))
    # anchor 0 sits on the nucleus (class 0), anchor 1 is background (class 2): the weighted mean by hand
    weighted = torch.nn.functional.cross_entropy(out.logits[0], torch.tensor([0, 2]), weight=torch.tensor([5.0, 1.0, 0.2]))
    assert cls(PrompterConfig(num_classes=2, class_weights=(5.0, 1.0))) == pytest.approx(float(weighted))
    assert cls(PrompterConfig(num_classes=2, class_weights=(5.0, 1.0))) != pytest.approx(cls(plain))
    with pytest.raises(ValueError, match="class_weights"):
        cls(PrompterConfig(num_classes=2, class_weights=(1.0,)))


def test_tissue_context_starts_from_the_prompter_it_is_seeded_by_and_then_learns():
    """`class_context`: a prompter trained without it seeds one with it and, at step 0, predicts
    exactly the same (the context projection starts at zero); the projection then gets gradients
    from the class loss, so training can use the context; even or negative sizes are refused."""
    from dataclasses import replace

    shipped, ctx, x = _seeded_by_the_bundled_prompter(class_context=5)
    a, b = shipped(x), ctx(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.points, b.points)
    b.logits.logsumexp(-1).sum().backward()
    assert ctx.context_proj.weight.grad.abs().sum() > 0
    for bad in (4, -1):
        with pytest.raises(ValueError, match="class_context"):
            Prompter(replace(shipped.config, class_context=bad))
