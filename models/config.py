"""Dataclass configs for the prompter, the segmentor and training, loaded from YAML.

One YAML file in `configs/` describes a dataset + model size; the defaults here are the
release's numbers for Kumar (method-notes.md) so a config only states what differs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


@dataclass
class PrompterConfig:
    backbone: str = "convnext_small"  # any timm name that supports features_only
    strides: tuple[int, ...] = (4, 8, 16, 32)  # pyramid levels used (4..16 for PanNuke)
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model (e.g. depths, dims)
    # "imagenet": training starts the backbone from packaged ImageNet weights (models/pretrained.py;
    # the [pretrained] extra); None: random. Read at training only: model files hold trained weights
    pretrained: str | None = None
    # "promptnucseg": ours; "release": the authors' released network, detail for detail, so
    # their checkpoints load key for key (models/release.py; differences in network.py)
    layout: str = "promptnucseg"
    neck_inputs: tuple[int, ...] = ()  # backbone strides fed to the FPN; () = `strides` (release PanNuke: 4..32 in, 3 out)
    init_checkpoint: str | None = None  # an earlier prompter to fine-tune from (training only; a one-class one may seed a typed one)
    fpn_channels: int = 256
    anchor_step: int = 16  # lambda: 16 for Kumar/CPM-17, 8 for PanNuke
    num_classes: int = 1  # C; the heads predict C + 1 (last = background)
    dropout: float = 0.1
    # tissue context for the class head: the coarsest pyramid level averaged over k x k cells
    # (k * 32 px) around each point, added to the class head's input through a zero-started
    # projection, so a prompter trained without it starts from its own predictions; 0 = off
    class_context: int = 0
    # loss
    match_distance_weight: float = 0.1  # Hungarian cost = w * L2 - p(class of GT)
    background_weight: float = 0.2  # CE weight of the background class
    # CE weight of each nucleus class (typed prompters; () = 1 each): a rare class (CoNSeP's Other, 1.4%)
    # is otherwise never predicted, as the anchors' background and common classes outvote it
    class_weights: tuple[float, ...] = ()
    regression_weight: float = 5e-3
    aux_mask_weight: float = 1.0
    focal_gamma: float = 2.0
    # inference
    nms_distance: float = 11.0  # px; 12 for PanNuke / CPM-17
    mask_filter: bool = True  # drop points whose auxiliary foreground logit <= 0


@dataclass
class SegmentorConfig:
    arch: str = "sam_vit_b"  # a name in models.segmentor.build.SEGMENTOR_REGISTRY
    init_checkpoint: str | None = None  # official sam_vit_*.pth to fine-tune from (training only)
    # parameter-name prefixes to take from our own init_checkpoint, the rest left as built (e.g. a
    # new pretrained encoder under v2's decoder); () = the whole segmentor
    init_parts: tuple[str, ...] = ()
    crop_size: int = 256  # SAM runs on crops at native resolution, no resize to 1024
    num_negatives: int = 1  # K nearest neighbours as negative prompts
    # light variants only (ignored by the official sam_vit_* archs)
    embed_dim: int = 256  # prompt/mask-decoder width
    encoder_name: str = "resnet18"  # timm backbone for the CNN variant
    encoder_pretrained: str | None = None  # "imagenet": as PrompterConfig.pretrained, for the CNN variant's encoder
    encoder_stride: int = 8  # 8 or 16: image-embedding stride of the CNN/ViT variants
    vit_dim: int = 192
    vit_depth: int = 4
    vit_heads: int = 3
    # arch sam_vit only: SAM's own ViT at any size (patch 16), e.g. a reduced test model
    vit_window: int = 14
    vit_global_attn: tuple[int, ...] = ()
    decoder_depth: int = 2
    decoder_mlp_dim: int = 1024
    # sam_cnn_light only: fuse the encoder's stride-4 and stride-2 features into the decoder's
    # mask features and predict masks at stride 2 (models/segmentor/high_res.py)
    high_res: bool = False
    # the release freezes SAM's *pretrained* prompt encoder; a light model's starts random, and
    # freezing a random one only hurts, so light configs train it
    freeze_prompt_encoder: bool = True
    # loss (20 * focal + 1 * dice + 1 * IoU MSE)
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0


@dataclass
class InferenceConfig:
    window: int = 256
    window_overlap: int = 64
    edge_margin: int = 7  # drop masks within this many px of an inner window edge
    box_nms_iou: float = 0.3  # 0.5 for CPM-17
    mask_threshold: float = 0.0  # on logits
    # drop a nucleus when higher-scoring masks cover more than this fraction of its own mask
    # (a second prompt on one nucleus gives a sliver or a copy of it); 1.0 keeps all
    max_covered_fraction: float = 1.0
    # two prompts within `duplicate_distance` px are one nucleus when, decoded without
    # negatives, each lies in the other's mask and the masks overlap by this IoU: the weaker
    # prompt is dropped and the other keeps its mask without that negative (0: off)
    duplicate_iou: float = 0.0
    duplicate_distance: float = 24.0
    prompt_batch: int = 256  # prompts decoded together against one embedding
    # run the prompter on the segmentor's window grid (each window keeps the prompts in its
    # share of the overlaps) rather than on the whole tile at once as the authors' release
    # does: a prompt then depends only on its window, so tiles on that grid reproduce a
    # whole-slide pass exactly, and the prompter sees 256-px inputs as in training
    prompter_on_windows: bool = True
    # the release's choices, on in its presets (configs/release_*.yaml): the last window moved
    # flush with the tile's end (ours reaches past it, so windows never depend on where a
    # tile stops); a nucleus cut by every window it is in dropped (ours keeps its best try);
    # each prompt decoded with and without its negatives, the better kept (CPM-17 SAM-H)
    last_window_flush: bool = False
    edge_fallback: bool = True
    decode_without_negatives: bool = False
    # test-time augmentation (the release's): each window's masks decoded in its eight flips
    # and quarter turns, logits and predicted IoU averaged; 8x the segmentor's time
    tta: bool = False


@dataclass
class ModelConfig:
    name: str = "promptnucseg"
    mpp: float = 0.25  # microns per pixel the model works at (40x)
    class_names: tuple[str, ...] = ("nucleus",)
    class_colors: tuple[tuple[int, int, int], ...] = ((220, 40, 40),)
    prompter: PrompterConfig = field(default_factory=PrompterConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # dataset folders (see models.data.open_dataset)
    val_names: list[str] = field(default_factory=list)  # images (or shell patterns: train_8_*) held out of `train` for validation
    val: list[str] = field(default_factory=list)  # extra validation folders
    crop_size: int = 256
    mpp: float | None = None  # resample every image to this many um/px when it differs (None: as stored)
    # YAML files of per-image um/px ({stem: mpp}) for data sets that mix resolutions (CPM-15:
    # configs/datasets/cpm15_mpp.yaml); they win over a data set's own mpp
    image_mpp: list[str] = field(default_factory=list)


@dataclass
class AugmentConfig:
    """Training augmentation (models/training/augment.py); the release's families, ours off by default."""

    flip_rot: bool = True
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.04
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_prob: float = 0.2
    noise_std: float = 6.0
    hed_jitter: float = 0.0  # sigma: each stain's OD x U(1-s, 1+s) + U(-s, s); 0.05 is "HED-light"
    scale_range: tuple[float, float] = (1.0, 1.0)  # crop resampled by a factor drawn log-uniformly here


@dataclass
class TrainConfig:
    epochs: int = 200
    steps_per_epoch: int = 100
    batch_size: int = 8
    lr: float = 1e-4  # scaled by batch / 8 as in the release
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    ema_decay: float = 0.99
    lr_drop_epochs: tuple[int, ...] = ()  # step decay x0.1 (segmentor)
    nuclei_per_crop: int = 25  # Z for the segmentor
    workers: int = 0
    seed: int = 0
    # convolution weights and crops in channels-last layout (1.07x on the prompter's CPU step,
    # the same arithmetic up to float rounding); false: the NCHW layout of earlier runs
    channels_last: bool = True
    val_every: int = 1
    max_minutes: float | None = None  # stop cleanly (and checkpoint) after this wall time
    # parameter-name prefixes to train (e.g. [class_head]); the rest is frozen and kept in eval
    # mode (its BatchNorm statistics and dropout as the warm start left them). () = everything
    trainable: tuple[str, ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any] | None) -> T:
    """Build a (nested) dataclass from a dict, refusing unknown keys so typos fail loudly."""
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(known)})")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(cls(), name) if _has_default(known[name]) else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` edits (value read as YAML) on a config's raw dict, so an ablation
    is the shipped config plus one flag instead of a second copy of the file."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. model.segmentor.freeze_prompt_encoder=true")
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file. Fix: pass one of the YAML files in configs/")
    with open(path) as fh:
        values = yaml.safe_load(fh) or {}
    try:
        values = apply_overrides(values, list(overrides or []))
        return from_dict(ExperimentConfig, values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
