"""The per-slide journal: what counts as done, cut-short lines, changed settings."""
import json

import pytest

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.journal import Journal, quick_file_hash


def test_batches_count_as_done_only_with_their_part(tmp_path):
    j = Journal(tmp_path / "slide")
    assert j.start({"tile_size": 1024}) is False
    for b in (0, 2):
        part = j.part_path(b)
        part.write_bytes(b"x")
        j.record(b, part, {"nuclei": 3})
    j.record(5, j.part_path(5), {"nuclei": 1})  # journaled, but its part is missing
    with open(j.progress_path, "a") as fh:
        fh.write('{"batch": 7, "part": "0000')  # a line cut short by a kill
    assert sorted(j.done()) == [0, 2]
    assert [p.name for p in j.parts_in_order()] == ["000000.npz", "000002.npz"]
    assert Journal(tmp_path / "slide").start({"tile_size": 1024}) is True  # same settings: resume


def test_other_settings_are_refused_not_mixed(tmp_path):
    j = Journal(tmp_path / "slide")
    j.start({"tile_size": 1024, "overlap": 128})
    with pytest.raises(PipelineInputError, match=r"changed: overlap.*--overwrite"):
        j.start({"tile_size": 1024, "overlap": 64})
    j.clear()
    assert j.start({"tile_size": 1024, "overlap": 64}) is False
    assert json.loads((j.work / "manifest.json").read_text())["fingerprint"]["overlap"] == 64


def test_quick_hash_sees_content_not_name(tmp_path):
    a, b, c = tmp_path / "a.svs", tmp_path / "b.svs", tmp_path / "c.svs"
    a.write_bytes(b"1" * 3_000_000)
    b.write_bytes(b"1" * 3_000_000)
    c.write_bytes(b"1" * 2_999_999 + b"2")
    assert quick_file_hash(a) == quick_file_hash(b) != quick_file_hash(c)


def test_user_errors_survive_pickling_from_a_worker():
    import pickle

    from promptnucseg.models.checkpoints import CheckpointError
    from promptnucseg.wsi_pipeline.errors import PipelineInputError

    for err in (PipelineInputError("a.svs", "no microns-per-pixel", "pass --mpp"), CheckpointError("w.pt", "not a model", "pass another file")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.path == err.path
