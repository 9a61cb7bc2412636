"""The fault battery of issue 33: nothing outside `--out` touched, no finished night replaced,
a safe report page, a one-line message for every bad file. Which fault is covered where:
tests/FAULTS.md.

Every run is a real `segment` (the bundled model on 256-px crops of a real H&E image, the suite's
own fixture, one tile each); every "nothing outside changed" is a hash of a sibling folder before and after.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.wsi_pipeline import journal as journal_module
from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.wsi_pipeline.jail import IDENTITY_NAME, safe_name
from promptnucseg.wsi_pipeline.plan import SegmentSettings
from promptnucseg.wsi_pipeline.segment import segment_slide
from conftest import HE_CELLS, need

FAST = ("--mpp", "0.25", "--device", "cpu", "--no-progress", "--tile-size", "256", "--overlap", "64")


def settings(**kw) -> SegmentSettings:
    return SegmentSettings(**{"tile_size": 256, "overlap": 64, "mpp": 0.25, "progress": False, **kw})


def crop(path: Path, at: int = 0) -> Path:
    """A 256-px crop of a real H&E image (different `at`, different slide), saved as PNG."""
    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))[200 + at : 456 + at, 300:556]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def tree_hash(root: Path) -> str:
    """Names, kinds, link targets and bytes of everything under `root`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode("utf-8", "surrogateescape"))
            if p.is_symlink():
                h.update(b"->" + os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def folder_hash(folder: Path) -> str:
    """The slide folder's finished set: everything but the journal `.work`."""
    return "".join(p.name + (tree_hash(p) if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(folder.iterdir()) if p.name != ".work")


@pytest.fixture
def night(tmp_path):
    """`parent/out` as --out, with a sibling folder and a user's `parent/.work/` beside it."""
    parent = tmp_path / "parent"
    (parent / "sibling").mkdir(parents=True)
    (parent / "sibling" / "notes.txt").write_text("a user's notes")
    (parent / ".work").mkdir()
    (parent / ".work" / "user.txt").write_text("not promptnucseg's")
    (parent / "out").mkdir()
    return parent, parent / "out"


def outside_hash(parent: Path) -> str:
    return tree_hash(parent / "sibling") + tree_hash(parent / ".work") + str(sorted(p.name for p in parent.iterdir()))


# -- 1. the output folder is a jail -------------------------------------------------------------


@pytest.mark.parametrize("stem, name", [
    ("..", "%2E."), (".", "%2E"), ("report.html", "report%2Ehtml"), ("REPORT.HTML", "REPORT%2EHTML"), ("x.zarr", "x%2Ezarr"),
    (".hidden", "%2Ehidden"), ("a\\b", "a%5Cb"), ("tab\there", "tab%09here"), ("50%", "50%25"), ("a~2", "a%7E2"), ("", "%00"),
    ("CMU-1 (scan) #3 é", "CMU-1 (scan) #3 é"), ("javascript:alert(1)", "javascript:alert(1)"),
])
def test_safe_names_follow_the_documented_rule(stem, name):
    assert safe_name(stem) == name
    assert "/" not in name and not name.startswith(".")


def test_safe_names_never_collide():
    stems = ["..", ".", "%2E", "%2E.", "report.html", "report%2Ehtml", "a~2", "a%7E2", "", "%00", "x" * 300, "x" * 301, "x" * 300 + "%", "é" * 200, "é" * 201]
    names = [safe_name(s) for s in stems]
    assert len(set(names)) == len(stems), names
    assert all(len(n.encode()) <= 170 for n in names)


@pytest.mark.parametrize("filename, folder", [("...png", "%2E."), ("..png", "%2E"), ("report.html.png", "report%2Ehtml")])
def test_odd_slide_names_stay_inside_out_and_outside_is_untouched(night, predictor, filename, folder):
    parent, out = night
    slide = crop(parent / "in" / filename)
    before = outside_hash(parent)
    report = segment_slide(slide, out, predictor, settings(), log=lambda m: None)
    assert outside_hash(parent) == before  # parent/.work with the user's file is still there
    assert sorted(p.name for p in out.iterdir()) == [folder]
    assert Path(report["outputs"]["report"]) == out / folder / f"{folder}_report.json"
    assert all(Path(p).parent == out / folder for p in report["outputs"].values())
    assert report["nuclei"] > 0 and not (out / folder / ".work").exists()
    page = out / "report.html"
    assert main(["report", str(out)]) == 0 and page.is_file()  # report.html.png no longer collides
    assert outside_hash(parent) == before


def test_a_report_html_folder_from_an_earlier_version_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "report.html").mkdir(parents=True)
    (out / "report.html" / "report.html_report.json").write_text(json.dumps({"status": "complete"}))
    assert main(["report", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, out / "report.html")
    assert "is a folder" in line and "rename it" in line


def test_cleanup_removes_only_what_the_pipeline_made(tmp_path, predictor):
    slide = crop(tmp_path / "s.png")
    work = tmp_path / "out" / "s" / ".work"
    work.mkdir(parents=True)
    (work / "user.txt").write_text("mine")
    said: list[str] = []
    segment_slide(slide, tmp_path / "out", predictor, settings(), log=said.append)
    assert (work / "user.txt").read_text() == "mine" and sorted(p.name for p in work.iterdir()) == ["user.txt"]
    assert any("did not make" in m for m in said), said
    again: list[str] = []
    segment_slide(slide, tmp_path / "out", predictor, settings(), log=again.append)  # the user's file does not make it look unfinished
    assert any("already complete" in m for m in again), again


def test_a_slide_folder_that_links_outside_is_refused(night, predictor):
    parent, out = night
    slide = crop(parent / "in" / "s.png")
    (out / "s").symlink_to(parent / "sibling", target_is_directory=True)
    before = outside_hash(parent)
    with pytest.raises(PipelineInputError) as err:
        segment_slide(slide, out, predictor, settings(), log=lambda m: None)
    assert "outside the output folder" in str(err.value) and "Fix:" in str(err.value)
    assert outside_hash(parent) == before


def test_report_never_draws_into_a_slide_folder_that_links_outside(night, predictor, capsys):
    parent, out = night
    segment_slide(crop(parent / "in" / "s.png"), out, predictor, settings(), log=lambda m: None)
    elsewhere = parent / "sibling" / "t"
    segment_slide(crop(parent / "in" / "t.png", 100), parent / "sibling", predictor, settings(), log=lambda m: None)
    (out / "t").symlink_to(elsewhere, target_is_directory=True)
    before = outside_hash(parent)
    assert main(["report", str(out)]) == 0
    assert outside_hash(parent) == before
    assert "links outside the run folder" in (out / "report.html").read_text()


def test_a_journal_that_links_outside_is_never_written_or_deleted(night, predictor):
    parent, out = night
    slide = crop(parent / "in" / "s.png")
    (out / "s").mkdir()
    (out / "s" / ".work").symlink_to(parent / ".work", target_is_directory=True)
    before = outside_hash(parent)
    with pytest.raises(PipelineInputError, match="outside the output folder"):
        segment_slide(slide, out, predictor, settings(), log=lambda m: None)
    assert outside_hash(parent) == before


# -- 2. one slide, one folder, forever ----------------------------------------------------------


def test_another_slide_with_the_same_name_gets_its_own_folder(night, predictor):
    parent, out = night
    first = segment_slide(crop(parent / "caseA" / "1.png", 0), out, predictor, settings(), log=lambda m: None)
    done = folder_hash(out / "1")
    said: list[str] = []
    second = segment_slide(crop(parent / "caseB" / "1.png", 200), out, predictor, settings(), log=said.append)
    assert folder_hash(out / "1") == done  # the first night's results are untouched
    assert Path(second["outputs"]["report"]) == out / "1~2" / "1~2_report.json"
    assert first["nuclei"] != second["nuclei"] or first["config_hash"] != second["config_hash"]
    assert json.loads((out / "1~2" / IDENTITY_NAME).read_text())["slide"] == str((parent / "caseB" / "1.png").resolve())
    # each slide finds its own folder again, by content, under any path
    again: list[str] = []
    segment_slide(parent / "caseA" / "1.png", out, predictor, settings(), log=again.append)
    assert any("already complete in" in m and m.endswith(f"{out / '1'} (pass --overwrite to redo)") for m in again), again
    assert sorted(p.name for p in out.iterdir()) == ["1", "1~2"]


def test_asking_a_finished_folder_for_another_format_adds_it_and_keeps_the_rest(tmp_path, predictor):
    slide = crop(tmp_path / "s.png")
    out = tmp_path / "out"
    first = segment_slide(slide, out, predictor, settings(formats=("geojson", "zarr")), log=lambda m: None)
    zarr_bytes = tree_hash(out / "s" / "s.zarr")
    report = segment_slide(slide, out, predictor, settings(formats=("geojson", "table")), log=lambda m: None)  # same settings, one more output
    assert set(report["outputs"]) == {"report", "geojson", "table", "zarr"} and report["config_hash"] == first["config_hash"]
    assert tree_hash(out / "s" / "s.zarr") == zarr_bytes and (out / "s" / "s_nuclei.parquet").is_file()
    said: list[str] = []
    segment_slide(slide, out, predictor, settings(formats=("zarr",)), log=said.append)
    assert any("already complete" in m for m in said), said


def test_a_finished_folder_refuses_other_settings_and_overwrite_replaces_it_as_a_set(tmp_path, predictor, monkeypatch):
    slide = crop(tmp_path / "s.png")
    out = tmp_path / "out"
    segment_slide(slide, out, predictor, settings(), log=lambda m: None)
    finished = folder_hash(out / "s")
    with pytest.raises(PipelineInputError) as err:
        segment_slide(slide, out, predictor, settings(mpp=0.24), log=lambda m: None)
    message = str(err.value)
    assert "other settings (changed: slide_mpp" in message and "--overwrite" in message and "another --out" in message
    assert folder_hash(out / "s") == finished
    # --overwrite killed while exporting: the old set stays whole, and `report` still shows it
    from promptnucseg.wsi_pipeline import exporters

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporters, "write_table", dies)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, out, predictor, settings(mpp=0.24, overwrite=True), log=lambda m: None)
    old_report = json.loads((out / "s" / "s_report.json").read_text())
    assert old_report["mpp_used"] == 0.25 and (out / "s" / ".work").is_dir()
    assert {p.name for p in (out / "s").iterdir()} == {"s.geojson", "s.zarr", "s_nuclei.parquet", "s_report.json", ".work", IDENTITY_NAME}
    assert folder_hash(out / "s") == finished  # byte for byte
    assert main(["report", str(out)]) == 0  # ...and `report` shows it, as the earlier complete run's
    page = (out / "report.html").read_text()
    assert 'class="state finished"' in page and "these results are the earlier complete run" in page
    finished = folder_hash(out / "s")  # now with the report's pictures
    monkeypatch.undo()
    # killed while swapping the new set in: the next run finishes the swap, never a mix
    real_replace = os.replace
    moves = []

    def dies_mid_swap(src, dst):
        if ".partial-" not in str(src):  # the exporters' own atomic renames go through
            if len(moves) == 5:  # 4 old outputs moved aside, 1 new one in
                raise KeyboardInterrupt
            moves.append((src, dst))
        return real_replace(src, dst)

    monkeypatch.setattr(journal_module.os, "replace", dies_mid_swap)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, out, predictor, settings(mpp=0.24, overwrite=True), log=lambda m: None)
    monkeypatch.undo()
    assert not (out / "s" / "s_report.json").exists()  # the old report left first: no complete report over a mix
    said: list[str] = []
    report = segment_slide(slide, out, predictor, settings(mpp=0.24), log=said.append)
    assert any("finished swapping in" in m for m in said) and any("already complete" in m for m in said), said
    assert report["mpp_used"] == 0.24 and not (out / "s" / ".work").exists()
    assert not (out / "s" / "s_overlay.png").exists()  # the old set's pictures went with it
    geo = json.loads((out / "s" / "s.geojson").read_text())
    assert len(geo["features"]) == report["nuclei"]
    assert main(["report", str(out)]) == 0


# -- 3. a safe report page, checked in a real browser --------------------------------------------

HOSTILE = (
    "javascript:document.documentElement.setAttribute('data-pwned','1');x=1",
    """a"b<img src=x onerror="document.documentElement.setAttribute('data-pwned','2')">""",
    "c#d e é?&amp;",
)
HARNESS = """<!DOCTYPE html><html><head><title>harness</title></head><body><pre id="out">not loaded</pre>
<iframe id="f" src="PAGE"></iframe><script>
document.getElementById('f').addEventListener('load', function () {
  var d = this.contentDocument, rows = [];
  rows.push({kind: 'page', title: d.title, pwned: d.documentElement.getAttribute('data-pwned'), scripts: d.scripts.length,
             handlers: d.querySelectorAll('[onerror],[onload],[onclick],[onmouseover]').length, text: d.body.textContent});
  d.querySelectorAll('a[href]').forEach(function (a) { rows.push({kind: 'a', url: a.href, protocol: a.protocol, hash: a.hash}); });
  d.querySelectorAll('img').forEach(function (i) { rows.push({kind: 'img', url: i.src, loaded: i.complete && i.naturalWidth > 0}); });
  d.querySelectorAll('[id]').forEach(function (e) { rows.push({kind: 'id', id: e.id}); });
  document.getElementById('out').textContent = JSON.stringify(rows);
});
</script></body></html>"""


def browser_view(chromium: str, page: Path, tmp: Path) -> list[dict]:
    """What Chromium makes of `page`: every link and image as the browser resolves it, the ids,
    and whether anything ran (read from a harness page that loads it in an iframe)."""
    import html
    import subprocess
    from urllib.parse import quote

    harness = tmp / f"harness-{page.stem}.html"
    harness.write_text(HARNESS.replace("PAGE", "./" + quote(os.path.relpath(page, tmp))), encoding="utf-8")
    done = subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files", f"--user-data-dir={tmp / 'chromium-profile'}",
         "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dumped = done.stdout.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]
    return json.loads(html.unescape(dumped))


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")


def test_the_report_page_of_hostile_names_links_every_file_and_runs_nothing(tmp_path, predictor, chromium):
    from urllib.parse import unquote, urlparse

    out = tmp_path / "out"
    for k, stem in enumerate(HOSTILE):
        segment_slide(crop(tmp_path / "in" / f"{stem}.png", 40 * k), out, predictor, settings(), log=lambda m: None)
    assert main(["report", str(out)]) == 0
    page = out / "report.html"
    # once as written, once without its Content-Security-Policy: the escaping alone must hold
    bare = out / "report-without-csp.html"
    bare.write_text(page.read_text(encoding="utf-8").replace('http-equiv="Content-Security-Policy"', 'name="x-removed"'), encoding="utf-8")
    for shown in (page, bare):
        rows = browser_view(chromium, shown, tmp_path)
        info = rows[0]
        assert info["kind"] == "page" and info["pwned"] is None and info["scripts"] == 0 and info["handlers"] == 0, info
        for stem in HOSTILE:
            assert stem in info["text"]  # every name shown as text, exactly
        ids = {r["id"] for r in rows if r["kind"] == "id"}
        links = [r for r in rows if r["kind"] in ("a", "img")]
        drawn = sum(len([n for n in json.loads(p.read_text())["files"].values() if n.endswith(".png")]) for p in out.glob("*/*_pictures.json"))
        assert drawn >= 3 * 4  # overlay, density, areas and a zoomed inset per slide
        assert len([r for r in links if r["kind"] == "a" and not r["hash"]]) >= 3 * 6 and len([r for r in links if r["kind"] == "img"]) == drawn
        for r in links:
            assert r["protocol" if r["kind"] == "a" else "kind"] in ("file:", "img"), r
            url = urlparse(r["url"])
            assert url.scheme == "file", r
            if r["kind"] == "a" and r["hash"]:  # a link within the page: to a slide's section
                assert unquote(url.path) == str(shown) and unquote(r["hash"][1:]) in ids, r  # the browser's own decoding
                continue
            target = Path(unquote(url.path))
            assert target.exists() and out.resolve() in target.resolve().parents, r
            assert target.parent.name in {safe_name(s) for s in HOSTILE}, r  # the intended slide's folder
        assert all(r["loaded"] for r in links if r["kind"] == "img")  # the browser found every picture


# -- 4. every bad file gets a one-line message, never a traceback ---------------------------------


def one_error_line(err: str, path: Path) -> str:
    assert "Traceback" not in err and "During handling" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "Fix:" in lines[0], err
    return lines[0]


@pytest.mark.parametrize("kind, says", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "probably cut short or damaged"),
    ("text", "neither a zip nor a pickle"),
    ("bad-pickle", "probably cut short or damaged"),
])
def test_bad_model_files_are_named_with_the_fix(tmp_path, capsys, kind, says):
    from promptnucseg.models.predictor import BUNDLED_WEIGHTS

    model = tmp_path / f"{kind}.pt"
    if kind == "empty":
        model.write_bytes(b"")
    elif kind == "truncated":
        model.write_bytes(need(BUNDLED_WEIGHTS).read_bytes()[:300_000])
    elif kind == "text":
        model.write_text("<html>404 not found</html>")
    else:
        model.write_bytes(b"\x80\x02garbage that is not a pickle")
    out = tmp_path / "out"
    code = main(["segment", str(crop(tmp_path / "s.png")), "--out", str(out), *FAST, "--model", str(model)])
    line = one_error_line(capsys.readouterr().err, model)
    assert code == 2 and says in line, line
    assert not (out / "s" / "s_report.json").exists()


def _fc(*geometries) -> dict:
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": g, "properties": {}} for g in geometries]}


POINTS_FAULTS = {
    "multipoint-flat": (_fc({"type": "MultiPoint", "coordinates": [10, 20]}), "feature 0 (MultiPoint) has a position that is not [x, y] numbers"),
    "point-nested": (_fc({"type": "Point", "coordinates": [[10, 20]]}), "feature 0 (Point) has a position that is not [x, y] numbers"),
    "point-short": (_fc({"type": "Point", "coordinates": [10]}), "not [x, y] numbers"),
    "point-strings": (_fc({"type": "Point", "coordinates": ["a", "b"]}), "is not valid GeoJSON"),
    "multipoint-not-list": (_fc({"type": "MultiPoint", "coordinates": 7}), "is not valid GeoJSON"),
    "nan": ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [NaN, 3]}, "properties": {}}]}', "NaN"),
    "deep": ("[" * 100_000 + "]" * 100_000, "nests lists or objects too deeply"),
    "features-not-list": ({"type": "FeatureCollection", "features": 5}, "is not valid GeoJSON"),
    "only-other-geometries": (_fc(
        {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}, {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]},
        {"type": "GeometryCollection", "geometries": []}, None,
    ), "holds no points (6 features of other geometry types were skipped)"),
}


@pytest.mark.parametrize("name", sorted(POINTS_FAULTS))
def test_malformed_points_files_are_refused_in_one_line(tmp_path, name):
    from promptnucseg.wsi_pipeline.points import read_points

    content, says = POINTS_FAULTS[name]
    path = tmp_path / f"{name}.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PipelineInputError) as err:
        read_points(path)
    message = str(err.value)
    assert says in message and str(path) in message and "Fix:" in message and "\n" not in message, message


def test_a_huge_points_file_is_refused_before_it_is_read(tmp_path):
    from promptnucseg.wsi_pipeline.points import MAX_POINTS_BYTES, read_points

    path = tmp_path / "huge.geojson"
    with open(path, "wb") as fh:  # sparse: the size is real, the disk is not filled
        fh.truncate(MAX_POINTS_BYTES + 1)
    with pytest.raises(PipelineInputError) as err:
        read_points(path)
    assert "far more than any points file" in str(err.value) and str(path) in str(err.value) and "Fix:" in str(err.value)


def test_points_of_every_geometry_type_keep_the_points_and_skip_the_rest(tmp_path):
    from promptnucseg.wsi_pipeline.points import read_points

    path = tmp_path / "mixed.geojson"
    bad_props = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]}, "properties": [1]}
    odd_colour = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 8]}, "properties": {"classification": {"name": "T", "color": ["r", 0, 0]}}}
    doc = _fc({"type": "Point", "coordinates": [1, 2, 0]}, {"type": "MultiPoint", "coordinates": [[3, 4]]}, {"type": "Polygon", "coordinates": []}, None)
    doc["features"] += [bad_props, odd_colour]
    path.write_text(json.dumps(doc))
    points = read_points(path)
    assert points.xy.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]] and points.skipped == 2 and points.labels[-1] == "T"


def test_a_malformed_points_file_on_the_command_line_gives_one_line(tmp_path, capsys):
    path = tmp_path / "clicks.geojson"
    path.write_text(json.dumps(POINTS_FAULTS["multipoint-flat"][0]))
    code = main(["segment", str(crop(tmp_path / "s.png")), "--out", str(tmp_path / "out"), *FAST, "--points", str(path)])
    one_error_line(capsys.readouterr().err, path)
    assert code == 2


@pytest.mark.parametrize("pixels, says", [
    (np.full((600, 600, 3), 255, np.uint8), "is blank: every pixel is white or near-white"),
    (np.full((3, 3, 3), (200, 120, 170), np.uint8), "too small to hold a nucleus"),
])
@pytest.mark.parametrize("mask", [[], ["--no-tissue-mask"]])
def test_blank_and_tiny_images_are_named_for_what_they_are(tmp_path, capsys, pixels, says, mask):
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    code = main(["segment", str(path), "--out", str(tmp_path / "out"), *FAST, *mask])
    line = one_error_line(capsys.readouterr().err, path)
    assert code == 1 and ("no tissue" in line if pixels.shape[0] > 3 and not mask else says in line), line
    assert "grayscale" not in line


@pytest.mark.slow
def test_an_output_folder_made_read_only_mid_run_is_named_not_the_lock(tmp_path):
    """A real read-only bind mount, remounted in a user+mount namespace after two batches."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))[:600, :600]
    Image.fromarray(rgb).save(tmp_path / "big.png")
    out = tmp_path / "out"
    out.mkdir()
    cmd = " ".join(f"'{c}'" for c in [sys.executable, "-m", "promptnucseg", "segment", str(tmp_path / "big.png"), "--out", str(out), *FAST, "--batch-size", "1", "--workers", "1"])
    progress = out / "big" / ".work" / "progress.jsonl"
    script = f"""
mount --bind {out} {out} || exit 90
{cmd} > {tmp_path}/err 2>&1 &
pid=$!
while [ ! -f {progress} ] || [ $(wc -l < {progress}) -lt 2 ]; do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
mount -o remount,bind,ro {out} || exit 90
wait $pid; echo $? > {tmp_path}/rc
"""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=Path(__file__).resolve().parents[1], timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode == 90:
        pytest.skip("cannot bind-mount read-only here")
    err = (tmp_path / "err").read_text()
    line = one_error_line(err, out / "big")
    assert int((tmp_path / "rc").read_text()) == 1 and "became unwritable while writing" in line and "Read-only file system" in line, err
    assert "lock" not in line and "resumes" in line
    resumed = subprocess.run([sys.executable, "-m", "promptnucseg", "segment", str(tmp_path / "big.png"), "--out", str(out), *FAST, "--batch-size", "1", "--workers", "1"], capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr and "took over the lock" in resumed.stderr, resumed.stderr


# -- 4b. a corrupt tile inside a pyramid: the rest is finished, the region named --------------------


def corrupt_pyramid(path: Path, kind: str, bad_tile: int = 4, height: int = 768, width: int = 640) -> tuple[int, ...]:
    """A real H&E crop (768x640: 3x3 tiles, the last column short) as a tiled JPEG pyramid (SVS for
    OpenSlide, OME-TIFF for tifffile, generic pyramid TIFF), with 2,000 random bytes inside one
    level-0 tile, as scanners write them; returns that tile's level-0 box."""
    import tifffile

    rgb = np.asarray(Image.open(HE_CELLS).convert("RGB"))[:height, :width]
    h, w = rgb.shape[:2]
    kw = dict(tile=(256, 256), compression="jpeg", photometric="rgb")
    with tifffile.TiffWriter(path, ome=kind == "ome") as tif:
        res = dict(resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        if kind == "ome":
            tif.write(rgb, subifds=1, metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **kw, **res)
            tif.write(rgb[::2, ::2], subfiletype=1, **kw)
        elif kind == "svs":
            head = "Aperio Image Library v10.0.50\n"
            tif.write(rgb, description=f"{head}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.25", **kw, **res)
            tif.write(rgb[::2, ::2], description=f"{head}{w // 2}x{h // 2} -> {w // 2}x{h // 2} - |AppMag = 40|MPP = 0.5", **kw)
        else:
            tif.write(rgb, subifds=1, **kw, **res)
            tif.write(rgb[::2, ::2], subfiletype=1, **kw)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[bad_tile], tif.pages[0].databytecounts[bad_tile]
    data = bytearray(path.read_bytes())
    data[offset + count // 4 : offset + count // 4 + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    row, col = divmod(bad_tile, -(-w // 256))
    return col * 256, row * 256, 256, 256


KINDS = [("svs", "slide.svs"), ("ome", "slide.ome.tif"), ("tiff", "slide.tif")]


@pytest.mark.parametrize("kind, name", [*KINDS[:2], pytest.param(*KINDS[2], marks=pytest.mark.slow)])  # generic TIFF: the tifffile path again
def test_a_corrupt_tile_loses_only_its_block(tmp_path, predictor, kind, name):
    slide = tmp_path / name
    # not the first or last tile: opening probes those (a slide whose probe fails is refused, naming the box)
    box = corrupt_pyramid(slide, kind, bad_tile=1, height=512, width=512)
    said: list[str] = []
    report = segment_slide(slide, tmp_path / "out", predictor, settings(mpp=None), log=said.append)
    assert report["status"] == "complete with unreadable regions" and report["nuclei"] > 60, report["status"]
    assert [(r["level"], r["box"]) for r in report["unreadable_regions"]] == [(0, list(box))], report["unreadable_regions"]
    assert any("could not be decoded" in m and "level-0 box 256,0,256,256" in m for m in said), said


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", KINDS)
def test_a_corrupt_tile_is_named_and_the_rest_of_the_slide_finished(tmp_path, capsys, kind, name):
    slide = tmp_path / name
    box = corrupt_pyramid(slide, kind)
    out = tmp_path / "out"
    code = main(["segment", str(slide), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "Event loop is closed" not in captured.err and "asyncio" not in captured.err, captured.err
    line = json.loads(captured.out.strip().splitlines()[-1])
    assert line["status"] == "complete with unreadable regions" and line["unreadable_regions"] == 1, line
    report = json.loads(Path(line["report"]).read_text())
    assert [(r["level"], r["box"]) for r in report["unreadable_regions"]] == [(0, list(box))], report["unreadable_regions"]
    assert any(f"level-0 box {','.join(map(str, box))}" in w for w in report["warnings"]) and "level-0 box" in captured.err
    geo = json.loads((Path(line["report"]).parent / f"{Path(line['report']).parent.name}.geojson").read_text())["features"]
    assert len(geo) == report["nuclei"] > 150  # the other 8 of 9 tiles were segmented
    cx = [np.mean(np.asarray(f["geometry"]["coordinates"][0])[:, 0]) for f in geo]
    cy = [np.mean(np.asarray(f["geometry"]["coordinates"][0])[:, 1]) for f in geo]
    x, y, w, h = box
    inside = sum(x + 20 < a < x + w - 20 and y + 20 < b < y + h - 20 for a, b in zip(cx, cy))
    assert inside == 0  # nothing invented inside the blank block
    # a rerun finds it finished; the report page draws the box and says so
    assert main(["segment", str(slide), "--out", str(out), *FAST]) == 0 and "already complete" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "unreadable block(s) of the slide" in page and "boxed in red" in page
    folder = Path(line["report"]).parent
    overlay = np.asarray(Image.open(folder / f"{folder.name}_overlay.png").convert("RGB"))
    red = (overlay[..., 0] == 220) & (overlay[..., 1] == 0) & (overlay[..., 2] == 0)
    ys, xs = np.nonzero(red)
    assert red.sum() > 500 and abs(xs.min() - x) <= 2 and abs(xs.max() - (x + w)) <= 3 and abs(ys.min() - y) <= 2, (xs.min(), xs.max(), ys.min())


# -- 4c. torch that cannot load: which build and why, in one line ---------------------------------


def _limited(limit_bytes: int):
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.RLIM_INFINITY))

    return apply


@pytest.mark.parametrize("gib", [3, 4])
def test_an_address_space_limit_too_small_for_torch_is_named_before_it_loads(tmp_path, gib):
    import subprocess
    import sys

    from promptnucseg.environment import torch_build

    version, build = torch_build()
    if not build.startswith(("CUDA", "ROCm")):
        pytest.skip(f"torch {version} is a {build}: the address-space check is for GPU builds")
    slide = crop(tmp_path / "s.png")
    done = subprocess.run([sys.executable, "-m", "promptnucseg", "segment", str(slide), "--out", str(tmp_path / "out"), *FAST],
                          capture_output=True, text=True, preexec_fn=_limited(gib * 2**30), timeout=120)
    line = done.stderr.strip()
    assert done.returncode == 2 and line.count("\n") == 0 and line.startswith("error: torch "), done.stderr
    assert f"torch {version} ({build})" in line and f"address-space limit of {gib:.1f} GiB" in line and "Fix: raise the limit" in line and "CPU build" in line, line
    assert "Traceback" not in done.stderr and "bad_alloc" not in done.stderr and not (tmp_path / "out").exists()


def test_a_real_torch_import_failure_is_explained_in_one_line():
    import subprocess
    import sys

    code = (
        "from promptnucseg.environment import torch_import_problem\n"
        "try:\n    import torch\nexcept ImportError as err:\n    print(torch_import_problem(err))\nelse:\n    print('IMPORTED')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limited(int(1.5 * 2**30)), timeout=120)
    if "IMPORTED" in done.stdout:
        pytest.skip("torch imports within 1.5 GiB of address space here (a small CPU build)")
    line = done.stdout.strip()
    assert line.startswith("torch ") and "failed to import" in line and "Fix:" in line and "\n" not in line, (done.stdout, done.stderr[-500:])
    assert "may not map that much memory" in line and "1.5 GiB" in line, line


def test_two_slides_with_one_stem_in_one_command_get_two_folders(tmp_path, capsys):
    a, b = crop(tmp_path / "caseA" / "1.png", 0), crop(tmp_path / "caseB" / "1.png", 200)
    out = tmp_path / "out"
    assert main(["segment", str(a), str(b), "--out", str(out), *FAST]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(x["report"]).parent.name for x in lines] == ["1", "1~2"]
    assert main(["segment", str(a), str(a), "--out", str(out), *FAST]) == 2
    assert "the same slide is given more than once" in capsys.readouterr().err
