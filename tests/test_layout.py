"""The checkout and the installed package are one layout (issue: README commands on a fresh clone).

`python -m pytest` from a clone imports `promptnucseg` from the clone's folder; the checkout
finder must then resolve the top-level `models/`, `wsi_pipeline/`, `configs/` as
`promptnucseg.*`, and CI must run the README's own two commands.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", REPO / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_checkout_imports_its_own_top_level_folders_as_subpackages():
    code = (
        "import promptnucseg.models.interface as i, promptnucseg.wsi_pipeline.segment as s, "
        "promptnucseg.configs as c; print(i.__file__); print(s.__file__); print(c.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    files = [Path(line) for line in done.stdout.split()]
    assert files == [REPO / "models" / "interface.py", REPO / "wsi_pipeline" / "segment.py", REPO / "configs" / "__init__.py"]


def test_the_checkout_finder_serves_only_the_three_top_level_folders():
    code = "import importlib.util as u, promptnucseg; print(u.find_spec('promptnucseg.tests'), u.find_spec('promptnucseg.benchmarks'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "None"]


def test_ci_runs_the_readmes_two_commands_and_the_first_installs_what_the_second_needs():
    module = _load_readme_commands()
    install, tests = module.two_commands((REPO / "README.md").read_text())
    assert install.startswith('pip install ".[test]"') and "promptnucseg segment --sample" in install
    assert tests == "python -m pytest -q tests"
    # the install a user sees first is CPU-sized (PyTorch's CPU wheels outrank PyPI's CUDA build)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_commands.py" in ci and "mktemp" in ci and "venv" in ci
    assert ci.index("python .ci/readme_commands.py") < ci.index('du -sm "$VENV"')  # the venv's size, printed after them


def test_a_readme_without_the_section_is_refused():
    module = _load_readme_commands()
    with pytest.raises(SystemExit, match="Two commands"):
        module.two_commands("# title\n\nno commands here\n")
    with pytest.raises(SystemExit, match="expected 2 commands"):
        module.two_commands("## Two commands\n\n```bash\npip install .\n```\n\n## Next\n")


def test_ci_lints_the_python_code_with_a_pinned_ruff_before_the_readme_commands():
    import re

    pins = (REPO / ".ci" / "requirements-lint.txt").read_text()
    assert re.search(r"^ruff==[\d.]+", pins, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert '"$LINT_VENV/bin/ruff" check .' in ci and ci.index('ruff" check') < ci.index("python .ci/readme_commands.py")
    assert "[tool.ruff.lint]" in (REPO / "pyproject.toml").read_text()
