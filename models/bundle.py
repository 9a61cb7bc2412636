"""`promptnucseg export-model`: one file with both trained networks, ready to ship or share.

Takes the best prompter and segmentor checkpoints, keeps only their weights (fp16 by
default: half the size, the predictor loads them back as fp32) and the model config, and
records the validation metrics the caller measured, for the model card.

`--share-segmentor` writes a file that holds the prompter and *refers* to the segmentor of
another, self-contained model file in the same folder (by file name and sha256) instead of
copying it: the bundled typed model shares the default model's segmentor, so the package
ships those 24 MB once. The loader resolves the reference (`loading.shared_segmentor`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def bundle_model(
    prompter_path: str | Path, segmentor_path: str | Path, out: str | Path, half: bool = True, metrics: dict[str, Any] | None = None,
    run_config: str | Path | None = None, share_segmentor: bool = False,
) -> Path:
    """`run_config`: a YAML whose model name and inference settings replace those the
    checkpoints were trained with (settings chosen on validation after training).
    `share_segmentor`: refer to the segmentor of `segmentor_path` (a self-contained model
    file in `out`'s folder) by name and sha256 instead of copying its weights."""
    from .checkpoints import CheckpointError, expect_kind, file_sha256, half_state, read_checkpoint, save_checkpoint
    from .config import ModelConfig, from_dict, load_experiment, to_dict

    p_ckpt = read_checkpoint(prompter_path)
    expect_kind(prompter_path, p_ckpt, ("prompter", "model"))
    if p_ckpt["kind"] == "model":  # an earlier model's prompter, kept as it is (e.g. v1's in v2)
        p_ckpt = {"config": {"model": p_ckpt["config"]}, "state_dict": p_ckpt["prompter"], "metrics": p_ckpt.get("metrics", {}).get("prompter", {})}
    s_ckpt = read_checkpoint(segmentor_path)
    expect_kind(segmentor_path, s_ckpt, ("segmentor", "model"))
    shared: dict[str, Any] | None = None
    if s_ckpt["kind"] == "model":  # another model's segmentor, kept as it is (the typed model's)
        if "segmentor" not in s_ckpt:
            raise CheckpointError(segmentor_path, "refers to another file's segmentor itself", "pass the self-contained model file it refers to")
        if share_segmentor:
            if Path(segmentor_path).resolve().parent != Path(out).resolve().parent:
                raise CheckpointError(
                    segmentor_path, f"is not in the folder of --out ({Path(out).resolve().parent}); a shared segmentor is found beside the file that refers to it",
                    "write --out into the segmentor model's folder, or drop --share-segmentor for a self-contained file",
                )
            shared = {"file": Path(segmentor_path).name, "sha256": file_sha256(segmentor_path), "part": "segmentor"}
        s_ckpt = {"config": {"model": s_ckpt["config"]}, "state_dict": s_ckpt["segmentor"], "metrics": s_ckpt.get("metrics", {}).get("segmentor", {})}
    elif share_segmentor:
        raise CheckpointError(segmentor_path, "is a segmentor checkpoint; --share-segmentor refers to the segmentor of a model file", "pass a model file (export-model's output) as --segmentor, or drop --share-segmentor")
    config = from_dict(ModelConfig, p_ckpt["config"]["model"])
    config.segmentor = from_dict(type(config.segmentor), s_ckpt["config"]["model"]["segmentor"])
    # where training started is not part of a trained model (nothing is read from there again)
    config.segmentor.init_checkpoint, config.segmentor.init_parts, config.segmentor.encoder_pretrained = None, (), None
    config.prompter.init_checkpoint, config.prompter.pretrained = None, None
    if run_config is not None:
        chosen = load_experiment(run_config).model
        config.name, config.inference = chosen.name, chosen.inference
    conv = half_state if half else dict
    # the shared segmentor stays as its own file stores it (the hash is of that file)
    segmentor_part = {"segmentor_ref": shared} if shared else {"segmentor": conv(s_ckpt["state_dict"])}
    save_checkpoint(
        out,
        {
            "kind": "model",
            "config": to_dict(config),
            "prompter": conv(p_ckpt["state_dict"]),
            **segmentor_part,
            # the best epochs' validation records; their `minutes` count from the start of the last
            # resumed chunk, not the training time (which the caller's metrics, the card, state)
            "metrics": {"prompter": _best_epoch(p_ckpt), "segmentor": _best_epoch(s_ckpt), **(metrics or {})},
        },
    )
    return Path(out)


def _best_epoch(ckpt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "minutes"}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--prompter", required=True, help="prompter checkpoint (train-prompter's best.pt), or a model file whose prompter to keep")
    parser.add_argument("--segmentor", required=True, help="segmentor checkpoint (train-segmentor's best.pt), or a model file whose segmentor to keep")
    parser.add_argument(
        "--share-segmentor", action="store_true",
        help="refer to the segmentor of the --segmentor model file (same folder as --out) by name and sha256 instead of copying it; the file then loads only beside that one",
    )
    parser.add_argument("--out", required=True, help="output model file (.pt)")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    parser.add_argument("--metrics", help="JSON file of validation metrics to record in the bundle; an `evaluate --json` report is recorded as the model's validation")
    parser.add_argument("--config", help="YAML config whose model name and inference settings the bundle takes (default: the prompter checkpoint's)")


def run(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError

    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    if isinstance(metrics, dict) and metrics.get("mode") == "model":  # evaluate's report: its figures, not its per-image detail
        from .evaluation.cli_evaluate import validation_summary

        metrics = {"validation": validation_summary(metrics)}
    try:
        out = bundle_model(args.prompter, args.segmentor, args.out, half=not args.fp32, metrics=metrics, run_config=args.config, share_segmentor=args.share_segmentor)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
