"""`promptnucseg import-release`: one of our model files from a PromptNucSeg release pair.

The pair is read exactly as `segment --weights S.pth --prompter-weights P.pth` reads it
(models/release.py), so the file it writes runs the same networks with the same release
settings, and later runs need one flag: `--model model.pt`. Weights stay fp32 unless asked
(`--fp16` halves the file; outputs then differ in the last bits).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def import_release(prompter: str | Path, segmentor: str | Path, out: str | Path, preset: str | None = None, half: bool = False) -> Path:
    from .checkpoints import file_sha256, half_state, save_checkpoint
    from .config import to_dict
    from .loading import load_predictor

    predictor = load_predictor(segmentor, device="cpu", prompter_weights=prompter, preset=preset)
    if "release_preset" not in predictor.source:
        from .checkpoints import CheckpointError

        raise CheckpointError(prompter, "neither file is a PromptNucSeg release checkpoint", "pass the release's prompter (best.pth/latest.pth) and segmentor files, or use `export-model` for our own")
    conv = half_state if half else dict
    save_checkpoint(
        out,
        {
            "kind": "model",
            "config": to_dict(predictor.config),
            "prompter": conv(predictor.prompter.state_dict()),
            "segmentor": conv(predictor.segmentor.state_dict()),
            "metrics": {
                "release": {
                    "preset": predictor.source["release_preset"],
                    "prompter": {"file": str(prompter), "sha256": file_sha256(prompter)},
                    "segmentor": {"file": str(segmentor), "sha256": file_sha256(segmentor)},
                }
            },
        },
    )
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--prompter", required=True, help="the release's prompter file (best.pth, or latest.pth: its model_ema is used)")
    parser.add_argument("--segmentor", required=True, help="the release's segmentor file (or an official sam_vit_b/l/h checkpoint)")
    parser.add_argument("--preset", choices=("kumar", "cpm17", "pannuke"), help="the data set whose release settings to keep (default: read from the files)")
    parser.add_argument("--out", required=True, help="model file to write (.pt)")
    parser.add_argument("--fp16", action="store_true", help="store fp16 weights (half the size; default: fp32 as released)")


def run(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError

    try:
        out = import_release(args.prompter, args.segmentor, args.out, preset=args.preset, half=args.fp16)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); run it with: promptnucseg segment SLIDE --model {out}")
    return 0
