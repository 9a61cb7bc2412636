"""The model shipped in the package segments real H&E it never saw in training.

TCGA-A7-A13E is one of the three Kumar training images held out for validation (see
configs/kumar_light.yaml); the floors below sit under what the shipped model measured on
this crop (models/weights/MODEL_CARD.md), so a broken export, loader or predictor fails
here while a retrained model of the same quality passes.
"""
from __future__ import annotations


import numpy as np
import pytest
import tifffile
from PIL import Image

from promptnucseg.models.evaluation import aji, pq
from promptnucseg.models.interface import load_predictor
from promptnucseg.models.predictor import BUNDLED_WEIGHTS
from conftest import SHARED_DATA, need

KUMAR = SHARED_DATA / "kumar" / "train"
HELD_OUT = "TCGA-A7-A13E-01Z-00-DX1"
CROP = (slice(250, 762), slice(250, 762))
# the shipped model (v3) measured PQ 0.444, AJI 0.477 on this crop, 136 nuclei for 87 annotated
# (v2: 0.484 / 0.482; v1: 0.455 / 0.479; MODEL_CARD.md). TCGA-A7-A13E is the held-out image where
# v3 does worst (whole image PQ 0.501 against v2's 0.538, better on the other two): it finds more
# nuclei than are annotated there. The floors sit ~0.02 below v3's figures
PQ_FLOOR = 0.42
AJI_FLOOR = 0.455
MAX_FOUND = 1.8  # nuclei found per annotated nucleus (v3: 1.56 on this crop)

pytestmark = pytest.mark.slow


def test_bundled_model_segments_a_held_out_kumar_image():
    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    image, labels = KUMAR / "images" / f"{HELD_OUT}.png", KUMAR / "labels" / f"{HELD_OUT}.tif"
    need(image), need(labels)  # the accuracy floors are Kumar's own: no other image can stand in
    rgb = np.asarray(Image.open(image).convert("RGB"))[CROP]
    truth = tifffile.imread(labels)[CROP]
    predictor = load_predictor(device="cpu")  # no weights given: the bundled model
    assert predictor.describe()["weights"] == str(BUNDLED_WEIGHTS)
    (nuclei,) = predictor.predict([rgb])
    n_true = len(np.unique(truth)) - 1
    assert 0.6 * n_true <= len(nuclei) <= MAX_FOUND * n_true, (len(nuclei), n_true)
    inst, _ = nuclei.label_maps(rgb.shape[:2])
    scores = pq(truth, inst)
    a = aji(truth, inst)
    print(f"{HELD_OUT} crop: {len(nuclei)} nuclei ({n_true} true), PQ {scores.pq:.3f} DQ {scores.dq:.3f} SQ {scores.sq:.3f} AJI {a:.3f}")
    assert scores.pq >= PQ_FLOOR and a >= AJI_FLOOR
