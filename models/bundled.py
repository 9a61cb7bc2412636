"""The models bundled in the package, by name: `--model default|typed` and `promptnucseg models`.

One entry per model names its file and its card in `models/weights/`; nothing else about a
model is written here. A listing reads the rest where it is kept: classes and colours from the
file's config, validation figures from the metrics `export-model --metrics` recorded in the
file, training data and licence from the front matter of its card (the YAML block at the top).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    name: str  # what --model takes
    file: str  # in WEIGHTS_DIR
    card: str  # in WEIGHTS_DIR, with front matter (summary, training_data, licence)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def card_path(self) -> Path:
        return WEIGHTS_DIR / self.card


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel("default", "promptnucseg_light_kumar.pt", "MODEL_CARD.md"),
        BundledModel("typed", "promptnucseg_light_consep_typed.pt", "MODEL_CARD_typed.md"),
    )
}
DEFAULT_WEIGHTS = BUNDLED["default"].path
# Weights licences by model-name prefix, for run reports written before a model's description
# carried its card's licence (`describe()["licence"]`); see models/weights/MODEL_CARD.md
LICENCES = {"promptnucseg-light-kumar": "CC BY-NC-SA 4.0: non-commercial use only, share-alike (trained on MoNuSeg)"}


def weights_licence(model_name: str) -> str:
    """The licence of a model's weights, for every version of a named model (v1, -v2, ...)."""
    return next((text for prefix, text in LICENCES.items() if model_name.startswith(prefix)), "see the model file's documentation")


def resolve_model(weights: str | Path | None) -> tuple[Path, str | None]:
    """(file, bundled name or None) of a --model value: nothing or a bundled name gives that
    bundled file (names win over files of the same name: pass ./typed for a file called typed)."""
    from .checkpoints import CheckpointError

    if weights is None or str(weights) == "":
        name = "default"
    elif isinstance(weights, str) and weights in BUNDLED:
        name = weights
    else:
        return Path(weights), None
    path = BUNDLED[name].path
    if not path.is_file():
        raise CheckpointError(
            path, f"the bundled model '{name}' is missing from this installation",
            f"reinstall promptnucseg, or pass a model file's path to --model (bundled: {', '.join(BUNDLED)})",
        )
    return path, name


def card_facts(card: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (between a first line `---` and the next)."""
    import yaml

    text = card.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    facts = yaml.safe_load(text[4:end]) if end > 0 else None
    return facts if isinstance(facts, dict) else {}


def bundled_facts(name: str) -> dict[str, Any]:
    """A bundled model's card facts and the card's file name, for run reports (a missing or
    unreadable card gives none: the model still runs)."""
    card = BUNDLED[name].card_path
    try:
        return {**card_facts(card), "card": card.name} if card.is_file() else {}
    except (OSError, ValueError):
        return {}


def describe_bundled(model: BundledModel) -> dict[str, Any]:
    """What `promptnucseg models` shows of one bundled model, read from its file and card."""
    facts = card_facts(model.card_path) if model.card_path.is_file() else {}
    return {"name": model.name, **describe_file(model.path), "card": str(model.card_path), **facts}


def describe_file(path: Path) -> dict[str, Any]:
    """What a model file says of itself: model, size, classes, shared segmentor, recorded
    validation, and for an adapted file where it came from and how it did on the held-out clicks."""
    from .checkpoints import CheckpointError, read_checkpoint

    out: dict[str, Any] = {"file": str(path)}
    if not path.is_file():
        out["missing"] = True
        return out
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as err:
        out["error"] = str(err)
        return out
    config = ckpt.get("config", {})
    out["model"] = config.get("name")
    out["size_mb"] = round(path.stat().st_size / 1e6, 1)
    out["classes"] = {n: list(c) for n, c in zip(config.get("class_names", []), config.get("class_colors", []))}
    if "segmentor_ref" in ckpt:
        out["segmentor_from"] = ckpt["segmentor_ref"].get("file")
    out["validation"] = dict((ckpt.get("metrics") or {}).get("validation", {}))
    if isinstance(out["validation"].get("data"), str):
        out["validation"]["data"] = data_set_name(out["validation"]["data"])
    if isinstance(ckpt.get("adaptation"), dict):
        out["adaptation"] = ckpt["adaptation"]
    return out


def data_set_name(path: str) -> str:
    """A recorded validation path as the data set's name ("kumar/train"): the build machine's folders
    ("../shared/data/...") mean nothing to a user and are not theirs to have."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if "data" in parts:
        parts = parts[len(parts) - parts[::-1].index("data"):]
    return "/".join(parts[-2:]) or path


def _figures(validation: dict[str, Any]) -> list[str]:
    """Lines of numbers from a model's recorded validation (numbers, and dicts of numbers)."""
    lines = []
    flat = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in validation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if flat:
        lines.append(", ".join(flat))
    for k, v in validation.items():
        if isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values()):
            lines.append(f"{k}: " + ", ".join(f"{n} {x:.3f}" if isinstance(x, float) else f"{n} {x}" for n, x in v.items()))
    if isinstance(validation.get("images"), list):
        shown = validation["images"]
        lines.append("on " + ", ".join(map(str, shown[:6])) + (f" and {len(shown) - 6} more" if len(shown) > 6 else ""))
    if isinstance(validation.get("data"), str):
        lines.append(f"data set {validation['data']}")
    return lines


def format_listing(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        lines = [f"{m.get('name', m['file'])}: {m.get('summary', '')}".rstrip(": ")]
        lines.append(f"  file      {m['file']}" + (" (MISSING from this installation)" if m.get("missing") else f" ({m['size_mb']} MB, {m.get('model')})" if "size_mb" in m else ""))
        if m.get("segmentor_from"):
            lines.append(f"  segmentor shared with {m['segmentor_from']}")
        if "error" in m:
            lines.append(f"  error     {m['error']}")
        if m.get("classes"):
            lines.append("  classes   " + ", ".join(f"{n} (RGB {c[0]},{c[1]},{c[2]})" for n, c in m["classes"].items()))
        for key, label in (("training_data", "trained"), ("licence", "licence")):
            if m.get(key):
                lines.append(f"  {label:<9} {' '.join(str(m[key]).split())}")
        for i, line in enumerate(_figures(m.get("validation") or {})):
            lines.append(f"  {'validated' if i == 0 else '':<9} {line}")
        if m.get("adaptation"):
            lines.extend(_adaptation_lines(m["adaptation"]))
        if m.get("card"):
            lines.append(f"  card      {m['card']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _adaptation_lines(a: dict[str, Any]) -> list[str]:
    src = a.get("source_model") or {}
    before, after = a.get("held_out_before") or {}, a.get("held_out_after") or {}
    lines = [f"  adapted   from {src.get('bundled') or src.get('file')} (sha256 {str(src.get('sha256', ''))[:12]}...) on {a.get('train_points')} clicked nuclei"
             f" of {len(a.get('slides') or [])} slide(s), {a.get('steps')} steps, {a.get('train_minutes')} min"]
    if before and after:
        lines.append(f"  held out  {a.get('held_out_points')} clicks: detection F1 {before.get('f1')} -> {after.get('f1')}"
                     f" (precision {before.get('precision')} -> {after.get('precision')}, recall {before.get('recall')} -> {after.get('recall')})")
    return lines


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    parser.add_argument("--path", metavar="FILE", help="describe this model file instead (e.g. one written by `promptnucseg adapt`)")


def run(args: argparse.Namespace) -> int:
    import json

    models = [describe_file(Path(args.path))] if args.path else [describe_bundled(m) for m in BUNDLED.values()]
    print(json.dumps(models, indent=2) if args.json else format_listing(models))
    return 0 if not any("error" in m for m in models) else 2
