"""The bundled typed model (`--model typed`) segments a real CoNSeP patch it never trained on,
and its four classes reach every output with the names and colours the model card documents.

train_1_004 comes from CoNSeP source image train_1, one of the four held out for validation
(configs/consep_typed_v2.yaml): 120 annotated nuclei, 80 epithelial, 32 spindle, 8 inflammatory.
The model card's figures on all 64 held-out patches are checked too (about a minute on 2 cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from promptnucseg.cli import main
from promptnucseg.models.bundled import BUNDLED

from conftest import need

PATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep-patches" / "train" / "images" / "train_1_004.jpg"
# models/weights/MODEL_CARD_typed.md, "Classes and colours": QuPath shows these classes
DOCUMENTED = {"Other": [255, 165, 0], "Inflammatory": [0, 160, 0], "Epithelial": [220, 40, 40], "Spindle": [30, 90, 255]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def typed_run(tmp_path_factory):
    need(PATCH)
    if not BUNDLED["typed"].path.is_file():
        pytest.skip(f"the typed model {BUNDLED['typed'].path} is not in this checkout")
    out = tmp_path_factory.mktemp("typed")
    rc = main([
        "segment", str(PATCH), "--out", str(out), "--model", "typed", "--mpp", "0.25", "--device", "cpu",
        "--no-tissue-mask", "--no-progress", "--formats", "geojson,zarr,table",
    ])
    assert rc == 0
    return out / PATCH.stem


def test_typed_model_classes_reach_the_geojson_with_their_colours(typed_run):
    features = json.loads((typed_run / f"{PATCH.stem}.geojson").read_text())["features"]
    assert len(features) > 60  # 120 annotated; the default model finds ~75% of nuclei
    seen = {}
    for f in features:
        c = f["properties"]["classification"]
        assert DOCUMENTED[c["name"]] == c["color"]
        score = f["properties"]["measurements"]["Class score"]
        assert 0 < score <= 1
        seen[c["name"]] = seen.get(c["name"], 0) + 1
    # an epithelium-and-stroma patch: the model tells at least epithelial from spindle nuclei
    assert {"Epithelial", "Spindle"} <= set(seen), seen


def test_typed_model_classes_reach_the_report_zarr_and_table(typed_run):
    import pandas as pd
    import zarr

    report = json.loads((typed_run / f"{PATCH.stem}_report.json").read_text())
    assert report["model"]["bundled_model"] == "typed" and report["model"]["segmentor_weights"]["file"].endswith(BUNDLED["default"].file)
    assert list(report["class_counts"]) == list(DOCUMENTED)
    assert sum(report["class_counts"].values()) == report["nuclei"]
    density = report["class_per_mm2_tissue"]
    assert list(density) == list(DOCUMENTED)
    assert sum(density.values()) == pytest.approx(report["nuclei_per_mm2_tissue"], rel=1e-3, abs=0.5)
    store = zarr.open_group(str(typed_run / f"{PATCH.stem}.zarr"), mode="r")
    assert list(store.attrs["class_names"]) == list(DOCUMENTED) and [list(c) for c in store.attrs["class_colors"]] == list(DOCUMENTED.values())
    classes = np.asarray(store["class"][:])
    assert np.bincount(classes, minlength=4).tolist() == list(report["class_counts"].values())
    table = pd.read_parquet(typed_run / f"{PATCH.stem}_nuclei.parquet")
    assert set(table["class_name"]) <= set(DOCUMENTED) and (table["class_name"].map(list(DOCUMENTED).index) == table["class"]).all()


# models/weights/MODEL_CARD_typed.md: typed v2 measured mean F_t 0.401 (Other 0.152, Inflammatory
# 0.494, Epithelial 0.509, Spindle 0.450), the knn baseline 0.249 on the same nuclei; issue 29 asks
# for mean F_t >= 0.40, every class above 0, and 0.08 above knn. Floors a little under the figures.
HELD_OUT = "train_1_*,train_8_*,train_19_*,train_24_*"
MEAN_F_T_FLOOR = 0.39
CLASS_F_T_FLOOR = 0.10
ABOVE_KNN = 0.08


def test_typed_model_types_the_held_out_consep_images_well_clear_of_the_knn_baseline(tmp_path):
    need(PATCH.parents[1] / "classes")
    if not BUNDLED["typed"].path.is_file():
        pytest.skip(f"the typed model {BUNDLED['typed'].path} is not in this checkout")
    data = PATCH.parents[1]
    scores = {}
    for name, extra in (("model", []), ("knn", ["--type-baseline", "knn"])):
        report = tmp_path / f"{name}.json"
        argv = ["evaluate", "--data", str(data), "--images", HELD_OUT, "--model", "typed", "--device", "cpu", "--json", str(report)]
        assert main(argv + extra) == 0
        scores[name] = json.loads(report.read_text())["types"]
    model, knn = scores["model"], scores["knn"]
    assert model["mean_f_t"] >= MEAN_F_T_FLOOR, model["f_t"]
    assert min(model["f_t"].values()) >= CLASS_F_T_FLOOR, model["f_t"]
    assert model["mean_f_t"] >= knn["mean_f_t"] + ABOVE_KNN, (model["mean_f_t"], knn["mean_f_t"])
