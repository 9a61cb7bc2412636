"""A wheel built from the repo carries what an installed user needs offline.

`pip install .` (the README's first command) installs a wheel, not the checkout; the bundled
model sits in a plain folder, so a package-data rule that misses it would ship a package that
fails on its first run. Build the wheel for real and look inside.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_ships_the_bundled_model_and_configs(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment; cannot build a wheel offline")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("promptnucseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = sorted((REPO / "models" / "weights").glob("*.pt"))
    assert weights, "the repo has no bundled model in models/weights/"
    for w in weights:
        assert f"promptnucseg/models/weights/{w.name}" in names
    from promptnucseg.models.bundled import BUNDLED

    for model in BUNDLED.values():  # every bundled model's card (`promptnucseg models` reads it), and its file when the repo has it
        assert f"promptnucseg/models/weights/{model.card}" in names
        assert model.path.is_file() <= (f"promptnucseg/models/weights/{model.file}" in names)
    for cfg in (REPO / "configs").glob("*.yaml"):
        assert f"promptnucseg/configs/{cfg.name}" in names
    assert "promptnucseg/cli.py" in names and "promptnucseg/wsi_pipeline/segment.py" in names
    assert "promptnucseg/wsi_pipeline/report/templates/run_report.html.j2" in names  # the run page's markup, a plain folder
    # nothing generic at the top of site-packages: every module sits under promptnucseg/
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert tops == {"promptnucseg"}, tops
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "CC BY-NC-SA 4.0" in metadata and "Apache-2.0" in metadata  # the weights' licence, not only the code's

    # every module of the installed wheel imports on its own (a fresh install, not the checkout)
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    code = (
        "import importlib, pkgutil, promptnucseg, sys\n"
        "assert promptnucseg.__file__.startswith(sys.argv[1]), promptnucseg.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(promptnucseg.__path__, 'promptnucseg.')]\n"
        "for name in names: name.endswith('__main__') or importlib.import_module(name)  # __main__ would run the CLI\n"
        "print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 80
