"""`python -m promptnucseg.models.training.candidate BEST.pt OUT.pt`: a run's best checkpoint as a
small committed candidate (fp16 weights, config and metrics, no optimizer state).

Training over days runs in chunks across sittings and machines; the candidate is what survives a
fresh machine. A later run starts from it with `init_checkpoint: OUT.pt` (the prompter's or the
segmentor's), which reads fp16 back as fp32.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoints import expect_kind, half_state, read_checkpoint, save_checkpoint


def save_candidate(best: str | Path, out: str | Path) -> dict:
    ckpt = read_checkpoint(best)
    expect_kind(best, ckpt, ("prompter", "segmentor"))
    keep = {k: ckpt[k] for k in ("kind", "config", "epoch", "metrics") if k in ckpt}
    save_checkpoint(out, {**keep, "state_dict": half_state(ckpt["state_dict"])})
    return keep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("best", help="train-prompter/train-segmentor best.pt")
    parser.add_argument("out", help="candidate file to write (replaced)")
    args = parser.parse_args(argv)
    kept = save_candidate(args.best, args.out)
    print(f"{args.out}: {kept['kind']} epoch {kept.get('epoch')}, {Path(args.out).stat().st_size / 2**20:.1f} MiB, metrics {kept.get('metrics', {})}")


if __name__ == "__main__":
    main()
