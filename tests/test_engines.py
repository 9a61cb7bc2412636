"""The CPU engines run the bundled model's own weights: the exported graphs give the eager
networks' outputs, bf16 and channels-last find the same nuclei on a real tile, and a missing
optional runtime is refused with the install command."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from promptnucseg.models.engines import ENGINES, OPTIONAL, EngineUnavailable, apply_engine


def _real_tile(kumar_image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kumar_image[:256, :256])


@pytest.fixture(scope="module")
def kumar_image():
    """A real H&E image of the suite's own (crowded nuclei, 512x640): any real tissue will do here."""
    from PIL import Image

    from conftest import HE_GLANDS

    return np.asarray(Image.open(HE_GLANDS).convert("RGB"))


def _fresh():
    from promptnucseg.models.interface import load_predictor

    return load_predictor(None, device="cpu")


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        apply_engine(object(), "tensorrt")


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_an_exported_engine_gives_the_eager_networks_outputs(name, kumar_image):
    module = OPTIONAL[name][0]
    try:
        __import__(module)
    except ImportError:
        with pytest.raises(EngineUnavailable, match=rf"pip install 'promptnucseg\[{OPTIONAL[name][1]}\]'"):
            apply_engine(_fresh(), name)
        return
    eager, other = _fresh(), apply_engine(_fresh(), name)
    x = torch.from_numpy(np.stack([_real_tile(kumar_image), _real_tile(kumar_image[256:])])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        a, b = eager.prompter(eager.prompter.normalize(x)), other.prompter(other.prompter.normalize(x))
        assert torch.allclose(a.points, b.points, atol=1e-2) and torch.allclose(a.logits, b.logits, atol=1e-2)
        assert torch.equal(a.anchors, b.anchors)
        ea, eb = eager.segmentor.embed(x.float()), other.segmentor.embed(x.float())
    main_a = ea if isinstance(ea, torch.Tensor) else ea.main
    main_b = eb if isinstance(eb, torch.Tensor) else eb.main
    assert main_a.shape == main_b.shape and torch.allclose(main_a, main_b, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["channels-last", "bf16"])
def test_torch_engines_find_the_same_nuclei_on_a_real_tile(name, kumar_image):
    tile = _real_tile(kumar_image)
    ref = _fresh().predict([tile])[0]
    got = apply_engine(_fresh(), name).predict([tile])[0]
    assert len(ref) > 5
    assert abs(len(got) - len(ref)) <= max(1, len(ref) // 20)  # bf16 may move a borderline prompt
    assert "eager" in ENGINES and name in ENGINES
