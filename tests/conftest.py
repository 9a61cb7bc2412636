"""What several test modules share: where ../shared/data is, the skip when it is absent, the
`shared_data` mark, and the bundled model.

`SHARED_DATA` is the one place the shared data is found (`PROMPTNUCSEG_SHARED_DATA`
overrides it). A test is marked `shared_data` when its code reaches that folder: its body,
the fixtures it uses, or the module's helpers and constants it names mention `SHARED_DATA`
(read from the source at collection), so `-m "not shared_data"` runs the tests that need
nothing beside the repo but, where they are marked `sample_slide` (the same way, by
`sample_slide_or_skip`), the sample slide: from the shared data or from the cache that
`promptnucseg segment --sample` fills. Tests that need *some* real image with labels use the
suite's own fixtures (`HE_*`, tests/fixtures/he: DSB-2018, CC0).
"""
from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(os.environ.get("PROMPTNUCSEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
_MARKER_NAME = "SHARED_DATA"

# The suite's own real images (tests/fixtures/he/README.md: DSB-2018, CC0), in the uniform layout
# images/<stem>.png + labels/<stem>.tif, so that a clone without ../shared still runs the tests
# that need *some* real H&E image with labels.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HE = FIXTURES / "he"
HE_CELLS = HE / "images" / "dsb-7f55678298ad.png"  # 1024 rows x 640 columns, white background, 362 nuclei
HE_EOSIN = HE / "images" / "dsb-4193474b2f1c.png"  # 512x640, pink eosin and a red vessel, 44 large nuclei
HE_GLANDS = HE / "images" / "dsb-a7f6194ddbea.png"  # 512x640, crowded nuclei, 274


def he_labels(image: Path) -> Path:
    """The instance map beside a fixture image."""
    return image.parent.parent / "labels" / f"{image.stem}.tif"


def _shown(path: Path) -> str:
    """A path as a skip message may show it: relative to ../shared/data, never the build machine's."""
    try:
        return "../shared/data/" + path.relative_to(SHARED_DATA).as_posix()
    except ValueError:
        return path.name


def need(path: Path) -> Path:
    """`path`, or a skip that says the shared data is not beside the repo."""
    if not path.exists():
        pytest.skip(f"needs {_shown(path)} (the project's shared data beside the clone)")
    return path


def _as_sample_name(path: Path, name: str) -> Path:
    """A copy of a user's PROMPTNUCSEG_SAMPLE under the name the tests expect its folder by."""
    import tempfile

    copy = Path(tempfile.gettempdir()) / f"promptnucseg-tests-{os.getuid()}" / name
    if not copy.is_file() or copy.stat().st_size != path.stat().st_size:
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f"{name}.{os.getpid()}.tmp")
        tmp.write_bytes(path.read_bytes())
        os.replace(tmp, copy)
    return copy


def sample_slide_or_skip() -> Path:
    """The real sample slide (CMU-1-Small-Region) where this machine has it, without fetching.

    In order: PROMPTNUCSEG_SAMPLE, the user cache that `promptnucseg segment --sample` fills
    (checked by SHA-256), ../shared/data. We may not commit it (wsi_pipeline/sample.py), so a
    clone where neither command nor shared data put it skips, saying how to get it."""
    from promptnucseg.wsi_pipeline.sample import SAMPLE_NAME, SAMPLE_SHA256, cache_dir, sha256_of

    override = os.environ.get("PROMPTNUCSEG_SAMPLE")
    cached = cache_dir() / SAMPLE_NAME
    shared = SHARED_DATA / "slides" / SAMPLE_NAME
    for path in (Path(override) if override else None, cached, shared):
        if path is not None and path.is_file() and (path != cached or sha256_of(path) == SAMPLE_SHA256):
            return path if path.name == SAMPLE_NAME else _as_sample_name(path, SAMPLE_NAME)
    pytest.skip("needs the sample slide: run `promptnucseg segment --sample --out sample-run` once (it caches it)")


@pytest.fixture(scope="module")
def predictor():
    """The bundled model on the CPU, loaded once per test module."""
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"the bundled model {BUNDLED_WEIGHTS} is not in this checkout")
    return load_predictor(device="cpu")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


class _ModuleReach:
    """Which module-level names of one test module lead to `root` (SHARED_DATA, sample_slide_or_skip)."""

    def __init__(self, module: Any, root: str = _MARKER_NAME) -> None:
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):
            tree = ast.Module(body=[], type_ignores=[])
        self.uses: dict[str, set[str]] = {}
        for stmt in tree.body:
            targets: list[str] = []
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                targets = [stmt.name]
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    targets += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
            for name in targets:
                self.uses.setdefault(name, set()).update(_names(stmt))
        self.reaching: set[str] = {root}
        changed = True
        while changed:
            changed = False
            for name, used in self.uses.items():
                if name not in self.reaching and used & self.reaching:
                    self.reaching.add(name)
                    changed = True

    def reaches(self, func: Any) -> bool:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        except (OSError, TypeError, SyntaxError):
            return False
        return bool(_names(tree) & self.reaching)


_reach_cache: dict[tuple[str, str], _ModuleReach] = {}
_MARKS = {_MARKER_NAME: "shared_data", "sample_slide_or_skip": "sample_slide"}


def _reach(module: Any, root: str = _MARKER_NAME) -> _ModuleReach:
    if (module.__name__, root) not in _reach_cache:
        _reach_cache[module.__name__, root] = _ModuleReach(module, root)
    return _reach_cache[module.__name__, root]


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        if func is None:
            continue
        funcs = [func]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info is not None else ()):
            funcs += [d.func for d in defs]
        for root, mark in _MARKS.items():
            if any(_reach(sys.modules[f.__module__], root).reaches(f) for f in funcs if f.__module__ in sys.modules):
                item.add_marker(getattr(pytest.mark, mark))
