"""What several test modules share: the skip for missing ../shared data, and the bundled model."""
from __future__ import annotations

from pathlib import Path

import pytest


def need(path: Path) -> Path:
    """`path`, or a skip that says the shared data is not beside the repo."""
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data beside the repo)")
    return path


@pytest.fixture(scope="module")
def predictor():
    """The bundled model on the CPU, loaded once per test module."""
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    return load_predictor(device="cpu")
