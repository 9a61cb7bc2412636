"""What the pipeline knows of a model comes from `ModelFacts` (models/interface.py): its scale,
window grid, tile alignment, palette, plausible ranges and whether its windows can be tiled
seamlessly; `wsi_pipeline/` spells none of them, and the seam imports nothing that imports it back.
One `ModelSpec` (wsi_pipeline/model_spec.py) is what the CLI, the dask workers and the API load."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from promptnucseg.models.interface import TILE_ALIGN, ModelFacts, NucleusRanges, Palette, hex_color

ROOT = Path(__file__).resolve().parents[1]


def _models_import_graph() -> dict[str, set[str]]:
    """models/ module -> the models/ modules it imports, at the top or inside a function alike."""
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f for f in (ROOT / "models").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = (node.module or "").removeprefix("promptnucseg.")
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    if target in files:
                        graph[mod].add(target)
            elif isinstance(node, ast.Import):
                graph[mod] |= {a.name.removeprefix("promptnucseg.") for a in node.names} & set(files)
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_seam_imports_nothing_that_imports_it_back():
    """interface -> loading -> predictor (and -> adaptation) must not lead back to interface: the
    predictor takes its types from tiles.py and facts.py, which interface re-exports."""
    graph = _models_import_graph()
    assert {"models.loading", "models.predictor", "models.adaptation"} <= _reach(graph, "models.interface")  # the graph is real
    back = sorted(m for m in _reach(graph, "models.interface") if "models.interface" in _reach(graph, m))
    assert back == []


def test_the_pipeline_names_no_model_and_spells_no_model_constant():
    """No bundled model's name, window size, window step or tile alignment written into wsi_pipeline/."""
    names = re.compile(r"promptnucseg[-_]light|light[-_]kumar|consep[-_]typed", re.I)
    constants = re.compile(r"\b(?:256|192)\b[^\n]*\bwindow|\bwindow\w*[^\n]*\b(?:256|192)\b|//\s*32\s*\*\s*32|\balign\b[^\n]*=\s*32\b|= 0\.25\b")
    hits = []
    for f in sorted((ROOT / "wsi_pipeline").rglob("*.py")):
        for k, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if names.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{k}: {line.strip()}")
            if constants.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{k}: {line.strip()}")
    assert hits == []


def test_a_palette_keeps_each_class_with_its_colour():
    palette = Palette(("tumour", "immune"), ((220, 40, 40), (0, 160, 0)))
    assert palette.hex_colors() == ("#dc2828", "#00a000") and hex_color((255, 165, 0)) == "#ffa500"
    more = palette.extended(["mine"], [(1, 2, 3)])
    assert more.names == ("tumour", "immune", "mine") and more.colors[-1] == (1, 2, 3) and len(more) == 3
    with pytest.raises(ValueError, match="2 class names but 1 colours"):
        Palette(("a", "b"), ((1, 2, 3),))
    with pytest.raises(ValueError, match="0..255"):
        Palette(("a",), ((1, 2, 300),))


def test_the_bundled_model_states_its_facts(predictor):
    facts = ModelFacts.of(predictor)
    cfg = predictor.config
    assert facts.mpp == cfg.mpp == 0.25 and facts.class_names == tuple(cfg.class_names)
    assert facts.window_grid == (cfg.inference.window, cfg.inference.window - cfg.inference.window_overlap)
    assert facts.window == predictor.segmentor.crop_size and facts.tile_align == TILE_ALIGN
    assert facts.seamless_windows and facts.ranges == NucleusRanges() and facts.describe() == predictor.describe()


def test_release_settings_are_not_seamless_and_a_window_off_the_segmentor_is_refused(predictor):
    """A preset's `last_window_flush` (and whole-tile prompting) ties windows to the tile's end, so
    the facts say so and a run report can no longer claim `tiling.seamless: true` for it."""
    import copy

    from promptnucseg.models.predictor import PromptNucSegPredictor

    for change in ({"last_window_flush": True}, {"prompter_on_windows": False}):
        config = copy.deepcopy(predictor.config)
        for key, value in change.items():
            setattr(config.inference, key, value)
        other = PromptNucSegPredictor(predictor.prompter, predictor.segmentor, config, "cpu")
        assert not other.facts().seamless_windows, change
    config = copy.deepcopy(predictor.config)
    config.inference.window = 320
    with pytest.raises(ValueError, match="inference.window 320 is not its segmentor's crop size 256"):
        PromptNucSegPredictor(predictor.prompter, predictor.segmentor, config, "cpu")


def test_one_model_spec_from_the_flags_and_two_batch_sizes():
    """--batch-size is tiles per journaled batch; --window-batch windows per forward pass, following
    --batch-size unless given; bundled names stay names when a spec is made absolute for workers."""
    import argparse

    from promptnucseg.wsi_pipeline.cli_segment import add_arguments
    from promptnucseg.wsi_pipeline.model_spec import ModelSpec

    parser = argparse.ArgumentParser()
    add_arguments(parser, "segment")
    plain = ModelSpec.from_flags(parser.parse_args(["s.svs", "--out", "o"]))
    assert plain == ModelSpec() and plain.window_batch == 8
    assert ModelSpec.from_flags(parser.parse_args(["s.svs", "--out", "o", "--batch-size", "16"])).window_batch == 16
    both = parser.parse_args(["s.svs", "--out", "o", "--batch-size", "16", "--window-batch", "4", "--model", "typed"])
    assert both.batch_size == 16 and ModelSpec.from_flags(both).window_batch == 4
    assert ModelSpec.from_flags(both).absolute().weights == "typed"
    assert ModelSpec("some/file.pt").absolute().weights == str(Path("some/file.pt").absolute())
    with pytest.raises(SystemExit):
        parser.parse_args(["s.svs", "--out", "o", "--window-batch", "0"])


def test_a_window_batch_apart_from_the_tile_batch_enters_the_fingerprint():
    """A run whose --window-batch follows --batch-size keeps the fingerprint it had before the two
    were told apart (a resume of it goes on); another window batch is another run's settings."""
    from dataclasses import replace

    from conftest import HE_GLANDS

    from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
    from promptnucseg.wsi_pipeline.segment import fingerprint
    from promptnucseg.wsi_pipeline.slides import open_slide

    facts = ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True)
    settings = SegmentSettings(mpp=0.25, progress=False)
    with open_slide(HE_GLANDS) as reader:
        plan = plan_slide(reader, settings, facts)
    assert "window_batch" not in fingerprint(plan, facts, settings)  # the predictor's default (8) and --batch-size 8
    assert "window_batch" not in fingerprint(plan, replace(facts, description={"window_batch": 16}), replace(settings, batch_size=16))
    assert fingerprint(plan, facts, replace(settings, batch_size=16))["window_batch"] == 8  # --batch-size 16 --window-batch 8
    assert fingerprint(plan, replace(facts, description={"window_batch": 4}), settings)["window_batch"] == 4
