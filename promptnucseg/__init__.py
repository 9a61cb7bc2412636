"""promptnucseg: whole-slide nucleus segmentation with PromptNucSeg (prompter + SAM).

The repository keeps `models/`, `wsi_pipeline/` and `configs/` at its top level (the design
card) and they are imported as `promptnucseg.models`, `promptnucseg.wsi_pipeline` and
`promptnucseg.configs`. An installed wheel holds them inside this package (setup.py maps the
folders there), so no generic name such as `models` ever reaches site-packages. In a plain
checkout they sit beside this folder instead; `_CheckoutFinder` resolves exactly those three
names to the checkout's folders, so `python -m pytest` or `python -m promptnucseg` run from a
clone import the clone's code, the same modules the wheel would install.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

__version__ = "0.1.0"

#: the top-level folders of the repository that are subpackages of `promptnucseg`
TOP_LEVEL_PACKAGES = ("models", "wsi_pipeline", "configs")

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds `promptnucseg.<top-level folder>` in the checkout around this package."""

    names = {f"{__name__}.{name}" for name in TOP_LEVEL_PACKAGES}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(_CHECKOUT)])


def _is_checkout() -> bool:
    """True when this package runs from a source tree rather than an installed wheel."""
    if any((_HERE / name).is_dir() for name in TOP_LEVEL_PACKAGES):
        return False  # installed: the subpackages live inside this folder
    return all((_CHECKOUT / name / "__init__.py").is_file() for name in TOP_LEVEL_PACKAGES) and (
        _CHECKOUT / "pyproject.toml"
    ).is_file()


if _is_checkout() and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())


#: the Python API (promptnucseg/api.py, docs/python-api.md), imported on first use so that
#: `import promptnucseg` stays light (no torch, pandas or zarr until a function is called)
_API = ("segment_image", "segment_slide", "load_results", "SlideRun", "SlideFailed")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
