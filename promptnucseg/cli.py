"""The `promptnucseg` command: one entry point, one subcommand per job.

Each subcommand lives beside the code it drives and exposes `add_arguments(parser, command)`
and `run(args) -> int` (`args.command` names the subcommand). Those modules keep heavy imports (torch, openslide) inside `run`, so
`promptnucseg --help` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("promptnucseg.wsi_pipeline.cli_segment", "segment every nucleus in slides or images"),
    "train-prompter": ("promptnucseg.models.training.cli_train", "train the point prompter from a YAML config"),
    "train-segmentor": ("promptnucseg.models.training.cli_train", "fine-tune the SAM segmentor from a YAML config"),
    "export-model": ("promptnucseg.models.bundle", "bundle a trained prompter + segmentor into one model file"),
    "import-release": ("promptnucseg.models.release_import", "one model file from the PromptNucSeg authors' released prompter + segmentor"),
    "models": ("promptnucseg.models.bundled", "list the bundled models (--model NAME): classes, training data, licence, validation"),
    "evaluate": ("promptnucseg.models.evaluation.cli_evaluate", "score a checkpoint on a dataset, or two label-map folders"),
    "adapt": ("promptnucseg.wsi_pipeline.cli_adapt", "fine-tune a model's prompter from a pathologist's clicks (QuPath points in region annotations)"),
    "report": ("promptnucseg.wsi_pipeline.cli_report", "render an HTML page with pictures for a finished run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptnucseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"promptnucseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p, name)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from .environment import address_space_refusal, torch_import_problem

    refusal = address_space_refusal(args.command)
    if refusal is not None:  # before torch is imported: its failure there is an abort or a traceback
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except ImportError as err:
        problem = torch_import_problem(err)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
