"""Model files into a ready predictor: `load_predictor` (the bundled models by name, our model files,
official SAM or PromptNucSeg release segmentors with a prompter beside them).

Kept apart from `predictor.py`, which is the inference on a tile; this is which file holds
what, and how a release file's settings are chosen (`release.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import release
from .checkpoints import CheckpointError, expect_kind, file_sha256, float_state, read_checkpoint
from .config import ModelConfig, SegmentorConfig, from_dict, to_dict
from .devices import resolve_device
from .facts import DEFAULT_WINDOW_BATCH
from .bundled import WEIGHTS_DIR, bundled_facts, resolve_model
from .predictor import PromptNucSegPredictor
from .prompter import Prompter
from .segmentor import Segmentor, build_segmentor
from .segmentor.official import is_official_sam_state, load_official_sam, official_config


def _load_bundle(path: Path, ckpt: dict | None = None) -> tuple[Prompter, Segmentor, ModelConfig, dict]:
    """Both networks of a `model` file (`ckpt`: the file already read, so it is read once).

    A file from `export-model --share-segmentor` holds no segmentor but `segmentor_ref`: the
    file name and sha256 of a self-contained model file beside it whose segmentor it uses."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    expect_kind(path, ckpt, ("model",))
    config = from_dict(ModelConfig, ckpt["config"])
    prompter = Prompter(config.prompter)
    segmentor = build_segmentor(config.segmentor)
    seg_state = ckpt["segmentor"] if "segmentor" in ckpt else shared_segmentor(path, ckpt)[0]
    try:
        prompter.load_state_dict(float_state(ckpt["prompter"]))
        segmentor.load_state_dict(float_state(seg_state))
    except RuntimeError as err:
        raise CheckpointError(path, f"weights do not fit the config stored with them ({str(err).splitlines()[0]})", "re-export the model with `promptnucseg export-model`") from err
    return prompter, segmentor, config, ckpt.get("metrics", {})


def referred_file(path: Path, ref: dict) -> Path:
    """The model file a `segmentor_ref` names: beside the referring file, else, for a file adapted
    from a bundled model (`bundled: true`), in the installed weights folder."""
    beside = Path(path).parent / str(ref["file"])
    return WEIGHTS_DIR / str(ref["file"]) if ref.get("bundled") and not beside.is_file() else beside


def shared_segmentor(path: Path, ckpt: dict) -> tuple[dict, Path]:
    """The segmentor state a model file refers to (`segmentor_ref`), checked by hash, and its file."""
    ref = ckpt.get("segmentor_ref")
    fix = "export a self-contained model file: `promptnucseg export-model` without --share-segmentor"
    if not isinstance(ref, dict) or not ref.get("file") or not ref.get("sha256"):
        raise CheckpointError(path, "holds neither a segmentor nor a reference to one", "re-" + fix)
    target = referred_file(path, ref)
    if not target.is_file():
        raise CheckpointError(path, f"uses the segmentor of {ref['file']}, which is not beside it ({target} is missing)", f"put {ref['file']} (sha256 {ref['sha256'][:12]}...) next to it, or {fix}")
    actual = file_sha256(target)
    if actual != ref["sha256"]:
        raise CheckpointError(
            path, f"uses the segmentor of {target}, which has changed (sha256 {actual[:12]}..., the reference expects {ref['sha256'][:12]}...)",
            f"put back the {ref['file']} it was exported with, or {fix}",
        )
    other = read_checkpoint(target)
    expect_kind(target, other, ("model",))
    if "segmentor" not in other:
        raise CheckpointError(target, "refers to another file's segmentor itself; references are one level deep", "re-export it as a self-contained model file")
    return other[ref.get("part", "segmentor")], target


def load_predictor(
    weights: str | Path | None = None, device: str = "auto", prompter_weights: str | Path | None = None, batch_size: int = DEFAULT_WINDOW_BATCH, preset: str | None = None,
    tta: bool = False,
) -> PromptNucSegPredictor:
    """A ready predictor.

    - no `weights`, or a bundled model's name (`default`, `typed`: models/bundled.py): that model;
    - a promptnucseg `model` file (from `export-model` or `import-release`): both networks from it;
    - a segmentor (official SAM sam_vit_b/l/h, a PromptNucSeg release segmentor, or a
      promptnucseg `segmentor` file) with the bundled prompter or `prompter_weights` (a
      promptnucseg model/prompter file or a release prompter's best.pth/latest.pth).
    When a release file is among them, the release's settings for its data set run it
    (`preset`, else chosen from the files: models/release.py). `tta`: test-time augmentation.
    """
    dev = resolve_device(device)
    path, bundled_name = resolve_model(weights)
    ckpt = read_checkpoint(path)
    source: dict[str, Any] = {"weights": str(path), "weights_sha256": file_sha256(path)}
    if bundled_name:
        source["bundled_model"] = bundled_name
        source.update({k: v for k, v in bundled_facts(bundled_name).items() if k in ("licence", "card")})
    if ckpt.get("format") == "promptnucseg" and ckpt.get("kind") == "model":
        prompter, segmentor, config, metrics = _load_bundle(path, ckpt)
        source["metrics"] = metrics
        if "segmentor_ref" in ckpt and "segmentor" not in ckpt:
            ref = ckpt["segmentor_ref"]
            source["segmentor_weights"] = {"file": str(referred_file(path, ref)), "sha256": ref["sha256"]}
        if isinstance(ckpt.get("adaptation"), dict):  # adapted from a person's clicks: where from, how it did
            source["adaptation"] = {k: ckpt["adaptation"].get(k) for k in ("source_model", "held_out_before", "held_out_after", "train_points")}
        if preset:
            config = release.apply_preset(config, release.load_preset(preset, config.segmentor.arch))
            source["release_preset"] = {"name": preset, "reason": "chosen by the user"}
    elif release.release_prompter_state(ckpt) is not None or (ckpt.get("format") == "promptnucseg" and ckpt.get("kind") == "prompter"):
        raise CheckpointError(path, "is a prompter alone", "pass it as --prompter-weights together with --weights SEGMENTOR_OR_SAM.pth, or make one model file with `promptnucseg export-model` / `import-release`")
    else:
        segmentor, seg_fields, seg_is_release = _load_segmentor(path, ckpt)
        base = resolve_model(prompter_weights)[0]
        p_ckpt = read_checkpoint(base)
        rel_prompter = release.read_release_prompter(base, p_ckpt, preset)
        if rel_prompter is not None:
            prompter = Prompter(rel_prompter.config)
            _load_state(prompter, rel_prompter.state, base, "the release prompter")
            config = release.preset_model_config(rel_prompter.preset, rel_prompter.config, seg_fields)
            source["release_preset"] = {"name": rel_prompter.preset, "reason": rel_prompter.preset_reason}
        else:
            prompter, config = _load_prompter(base, p_ckpt)
            config.segmentor = from_dict(SegmentorConfig, {**to_dict(config.segmentor), **seg_fields})
            if seg_is_release or preset:
                name, reason = release.choose_preset({}, None, preset)
                config = release.apply_preset(config, release.load_preset(name, config.segmentor.arch))
                source["release_preset"] = {"name": name, "reason": reason}
        source["prompter_weights"] = str(base)
    config.inference.tta = config.inference.tta or tta
    return PromptNucSegPredictor(prompter, segmentor, config, dev, source, batch_size=batch_size)


def _load_state(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    try:
        model.load_state_dict(float_state(state))
    except RuntimeError as err:
        raise CheckpointError(path, f"{what} does not fit its architecture ({str(err).splitlines()[0][:200]})", "pass an unmodified file") from err


def _load_segmentor(path: Path, ckpt: dict) -> tuple[Segmentor, dict[str, Any], bool]:
    """A segmentor file of any kind we read -> (network, its SegmentorConfig fields, is it the release's)."""
    sam_state = ckpt if is_official_sam_state(ckpt) else release.release_segmentor_state(ckpt)
    if sam_state is not None:
        fields = official_config(sam_state)
        segmentor = build_segmentor(from_dict(SegmentorConfig, fields))
        try:
            load_official_sam(segmentor, sam_state)
        except ValueError as err:
            raise CheckpointError(path, str(err), "pass an unmodified SAM or PromptNucSeg release segmentor checkpoint") from err
        return segmentor, fields, sam_state is not ckpt
    if ckpt.get("format") == "promptnucseg" and ckpt.get("kind") == "segmentor":
        fields = dict(ckpt["config"]["model"]["segmentor"])
        segmentor = build_segmentor(from_dict(SegmentorConfig, fields))
        _load_state(segmentor, ckpt["state_dict"], path, "the segmentor")
        return segmentor, fields, False
    raise CheckpointError(
        path, "is neither a promptnucseg model nor an official SAM checkpoint, nor a promptnucseg segmentor or PromptNucSeg release file",
        "pass the bundled default (no --weights), a file from `promptnucseg export-model`/`import-release`, sam_vit_b/l/h, or a release segmentor",
    )


def _load_prompter(path: Path, ckpt: dict | None = None) -> tuple[Prompter, ModelConfig]:
    """The prompter (and model config) of a `model` bundle or of a `prompter` checkpoint."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    expect_kind(path, ckpt, ("model", "prompter"))
    if ckpt["kind"] == "model":
        prompter, _, config, _ = _load_bundle(path, ckpt)
        return prompter, config
    config = from_dict(ModelConfig, ckpt["config"]["model"])
    prompter = Prompter(config.prompter)
    _load_state(prompter, ckpt["state_dict"], path, "the prompter")
    return prompter, config
