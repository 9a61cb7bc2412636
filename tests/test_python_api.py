"""The Python API (promptnucseg/api.py): refusals before any model loads, the light import, and the
example of docs/python-api.md run verbatim on the real sample slide with the bundled model (slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import promptnucseg
from promptnucseg.wsi_pipeline.errors import PipelineInputError
from conftest import SHARED_DATA, need

CMU = SHARED_DATA / "slides" / "cmu_small_region.svs"
DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_import_stays_light():
    code = "import sys, promptnucseg; promptnucseg.segment_image; print(sorted(m for m in ('torch', 'pandas', 'zarr', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    "mpp,says",
    [
        (None, "mpp is missing"),
        (0.0, "not a plausible"),
        (float("nan"), "not a plausible"),
        (25, "not a plausible"),
        ("x", "not a number"),
    ],
)
def test_segment_image_refuses_missing_or_absurd_mpp(mpp, says):
    with pytest.raises(PipelineInputError, match=says) as err:
        promptnucseg.segment_image(np.zeros((64, 64, 3), np.uint8), mpp=mpp)
    assert "Fix: pass mpp=" in str(err.value)


def test_segment_slide_takes_the_commands_flags_only(tmp_path):
    with pytest.raises(TypeError, match="unknown option 'tile'.*tile_size"):
        promptnucseg.segment_slide(tmp_path / "x.svs", out=tmp_path / "out", tile=512)
    with pytest.raises(ValueError, match="--tile-size.*multiple of 32"):
        promptnucseg.segment_slide(tmp_path / "x.svs", out=tmp_path / "out", tile_size=500)
    with pytest.raises(promptnucseg.SlideFailed, match="x.svs"):  # the command's own one-line refusal
        promptnucseg.segment_slide(tmp_path / "x.svs", out=tmp_path / "out", no_progress=True)


def _doc_example() -> str:
    text = DOC.read_text()
    section = text[text.index("## Example") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTNUCSEG_SAMPLE", str(need(CMU)))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_doc_example(), str(DOC), "exec"), scope)
    nuclei, run, table = scope["nuclei"], scope["run"], scope["table"]
    assert (tmp_path / "nuclei.png").stat().st_size > 10_000
    assert len(nuclei) >= 5 and {"polygon", "area_um2", "centroid_x", "class_name"} <= set(nuclei.columns)
    # every outline lies in the array (its pixels) and holds its centroid's neighbourhood
    bounds = np.array([p.bounds for p in nuclei["polygon"]])
    assert bounds.min() >= -1 and bounds[:, 2:].max() <= 161
    assert 10 < nuclei["area_um2"].median() < 120
    assert run.folder == (tmp_path / "api-run" / "cmu_small_region").resolve() and run.nuclei == len(table) > 0
    assert run.outputs["table"].is_file() and table.attrs["report"]["config_hash"] == run.report["config_hash"]
    assert table["polygon"].map(lambda p: p.is_valid).all()
    inside = (table["point_x"].between(700, 860)) & (table["point_y"].between(1000, 1160))
    assert inside.all()  # the tiles read only the --roi region
    # the in-memory pass and the slide run find nearly the same nuclei in the region's middle
    mid = lambda x, y: (x > 730) & (x < 830) & (y > 1030) & (y < 1130)  # noqa: E731
    a = nuclei[mid(nuclei["point_x"] + 700, nuclei["point_y"] + 1000)]
    b = table[mid(table["point_x"], table["point_y"])]
    assert abs(len(a) - len(b)) <= max(2, 0.15 * len(b)), (len(a), len(b))
