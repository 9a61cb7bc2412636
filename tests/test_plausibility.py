"""A result that cannot be right says so (plausibility.py), and slides that cannot run are
refused before the model loads (cli_segment._refuse_unusable), on the real shared slides."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.models.interface import ModelFacts, NucleusRanges, Palette
from promptnucseg.wsi_pipeline.plausibility import result_warnings
from conftest import SHARED_DATA, need

DATA = SHARED_DATA
TCGA = DATA / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
KUMAR_VAL = DATA / "kumar" / "train" / "images" / "TCGA-18-5592-01Z-00-DX1.png"


def test_warnings_name_mpp_only_when_figures_are_far_off():
    ranges = NucleusRanges()
    assert result_warnings(6000, 1.0, 20.0, 0.25, "metadata", ranges) == []
    none_found = result_warnings(0, 0.2, None, 0.25, "override", ranges)
    assert len(none_found) == 1 and "0 nuclei per mm^2" in none_found[0] and "--mpp" in none_found[0]
    tiny = result_warnings(5000, 1.0, 1.2, 0.25, "override", ranges)
    assert len(tiny) == 1 and "median nucleus area 1.2" in tiny[0]
    assert result_warnings(0, 0.001, None, 0.25, "override", ranges) == []  # too little tissue to judge
    coarse = result_warnings(40, 1.0, 2.0, 1.0, "metadata", ranges)  # a 10x slide: the scan is the cause, not --mpp
    assert len(coarse) == 1 and "too coarse for nuclei (1 um/px" in coarse[0] and "--mpp" not in coarse[0]


@pytest.fixture()
def no_model(monkeypatch):
    """Loading the model fails the test: refusals must come first."""
    from promptnucseg.models import interface

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(interface, "load_predictor", refuse)


def test_missing_mpp_and_no_tissue_are_refused_without_loading_the_model(tmp_path, capsys, no_model):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 400, 3), 242, np.uint8)).save(blank)
    code = main(["segment", str(need(TCGA)), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("error:") == 1
    assert "no microns per pixel" in err and "objective" in err and "width in mm" in err and "4,443 px wide" in err
    code = main(["segment", str(blank), "--out", str(tmp_path / "out"), "--no-progress", "--mpp", "0.25"])
    err = capsys.readouterr().err
    assert code == 1 and "no tissue found" in err


def test_a_thumbnail_scale_slide_is_refused_without_loading_the_model_and_warned_when_forced(tmp_path, capsys, no_model):
    from promptnucseg.wsi_pipeline.plan import SegmentSettings, plan_slide
    from promptnucseg.wsi_pipeline.slides import open_slide

    code = main(["segment", str(need(TCGA)), "--out", str(tmp_path / "out"), "--no-progress", "--mpp", "4"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("error:") == 1
    assert "finest level is 4 um/px" in err and "0.5 um/px or finer" in err and "--force-mpp" in err
    with open_slide(need(TCGA)) as reader:  # forced: planned, with the upsampling said
        plan = plan_slide(reader, SegmentSettings(mpp=4.0, force_mpp=True, roi=(2000, 1500, 64, 64)), ModelFacts(0.25, Palette(("nucleus",), ((220, 40, 40),)), 256, 192, seamless_windows=True))
    assert len(plan.warnings) == 1 and "upsampled x16" in plan.warnings[0] and "few or no real nuclei" in plan.warnings[0]


@pytest.mark.slow
def test_a_wrong_mpp_on_a_real_slide_warns_and_a_right_one_does_not(tmp_path):
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS
    from promptnucseg.wsi_pipeline.plan import SegmentSettings
    from promptnucseg.wsi_pipeline.segment import segment_slide

    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    predictor = load_predictor(device="cpu")
    # the TCGA slide shows a whole section in 4,443 px (~4 um/px): told 0.25, its nuclei are specks
    settings = SegmentSettings(tile_size=512, overlap=64, mpp=0.25, roi=(1800, 1400, 512, 512), formats=("table",), progress=False)
    said: list[str] = []
    report = segment_slide(need(TCGA), tmp_path, predictor, settings, log=said.append)
    assert report["status"] == "complete" and report["warnings"]
    assert any("warning:" in m and "--mpp" in m for m in said)
    # a real 40x crop at its true scale: no warning
    crop = tmp_path / "kumar.png"
    Image.fromarray(np.asarray(Image.open(need(KUMAR_VAL)).convert("RGB"))[200:712, 300:812]).save(crop)
    good = segment_slide(crop, tmp_path, predictor, SegmentSettings(tile_size=512, overlap=64, mpp=0.25, formats=("table",), progress=False), log=said.append)
    assert good["nuclei"] > 50 and good["warnings"] == [], good["warnings"]
    assert 300 < good["nuclei_per_mm2_tissue"] < 60000 and 5 < good["median_area_um2"] < 120


def test_a_folder_of_slides_is_segmented_by_pattern(tmp_path, capsys, no_model):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        Image.fromarray(np.full((400, 400, 3), 242, np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not a slide")
    code = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--no-progress", "--mpp", "0.25"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 2 and "notes.txt" not in err, err  # both images taken (and refused: blank), in order
    assert str(folder / "a.png") in lines[0] and str(folder / "b.png") in lines[1] and "no tissue found" in lines[0]
    code = main(["segment", str(folder), "--pattern", "*.svs", "--out", str(tmp_path / "out"), "--no-progress", "--mpp", "0.25"])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder with no slide files matching --pattern '*.svs'" in err and "Fix:" in err
