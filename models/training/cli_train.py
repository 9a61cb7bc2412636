"""`promptnucseg train-prompter` and `promptnucseg train-segmentor`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    parser.add_argument("--out", required=True, help="run folder: last.pt, best.pt, metrics.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--data", nargs="+", help="override data.train: dataset folders")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="override train.steps_per_epoch")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this wall time (checkpoint kept)")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one config value, e.g. --set model.segmentor.freeze_prompt_encoder=true (repeatable)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoints import CheckpointError
    from ..config import load_experiment
    from ..prompter import Prompter
    from ..prompter.warm_start import warm_start_prompter
    from ..segmentor import build_segmentor
    from ..segmentor.warm_start import warm_start
    from .data import load_split
    from ..devices import resolve_device
    from .loop import seed_everything, train
    from .tasks import PrompterTask, SegmentorTask

    try:
        cfg = load_experiment(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for attr, value in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch), ("batch_size", args.batch_size), ("max_minutes", args.max_minutes), ("seed", args.seed)):
        if value is not None:
            setattr(cfg.train, attr, value)
    if args.data:
        cfg.data.train = list(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        train_samples, val_samples = load_split(cfg.data)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed_everything(cfg.train.seed)
    if args.command == "train-prompter":
        prompter = Prompter(cfg.model.prompter)
        if not _start_pretrained(prompter, cfg.model.prompter, args.resume):
            return 2
        if cfg.model.prompter.init_checkpoint and not args.resume:
            try:
                warm_start_prompter(prompter, cfg.model.prompter.init_checkpoint)
                print(f"warm start from {cfg.model.prompter.init_checkpoint}", file=sys.stderr)
            except CheckpointError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        task = PrompterTask(prompter, cfg, train_samples, val_samples, augment=cfg.train.augment)
    else:
        segmentor = build_segmentor(cfg.model.segmentor)
        if not _start_pretrained(segmentor, cfg.model.segmentor, args.resume):
            return 2
        if cfg.model.segmentor.init_checkpoint and not args.resume:
            try:
                fresh = warm_start(segmentor, cfg.model.segmentor.init_checkpoint, cfg.model.segmentor.init_parts)
                print(f"warm start from {cfg.model.segmentor.init_checkpoint}; {len(fresh)} new tensors start at their initialisation", file=sys.stderr)
            except CheckpointError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        task = SegmentorTask(segmentor, cfg, train_samples, val_samples, augment=cfg.train.augment)
    print(f"{args.command}: {len(train_samples)} training / {len(val_samples)} validation images on {device}", file=sys.stderr)
    try:
        result = train(task, cfg, Path(args.out), device, resume=args.resume, progress=not args.no_progress)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(result.out_dir), "epochs": result.epochs_done, "best_score": result.best_score}))
    return 0


def _start_pretrained(network, config, resume: bool) -> bool:
    """A fresh run starts the encoder from packaged weights when its config says so (a resumed
    one has its own); False after printing the refusal."""
    from ..pretrained import PretrainedWeightsError, init_pretrained

    if resume:
        return True
    try:
        line = init_pretrained(network, config)
    except PretrainedWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    if line:
        print(f"pretrained start: {line}", file=sys.stderr)
    return True
