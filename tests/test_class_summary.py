"""A typed run's `class_summary` (per-class area, who lies near whom) and the run page that shows it,
from a real `--model typed` run on the suite's own crowded H&E fixture with two QuPath regions.

Every figure is checked against an independent computation from the nuclei table the run wrote
(all pairs of centroids, in µm), and the page in headless Chromium where one is installed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from promptnucseg.cli import main
from promptnucseg.models.bundled import BUNDLED
from promptnucseg.wsi_pipeline.class_summary import ClassSummaryBuilder, near_matrix

from conftest import HE_GLANDS

pytestmark = pytest.mark.slow
# Two QuPath annotations in level-0 px of the 640 x 512 fixture: a large one and a smaller one overlapping it
REGIONS = {"Tumour": (0, 0, 400, 512), "Hot spot": (300, 100, 640, 400)}


def _regions_file(path: Path) -> Path:
    features = [
        {"type": "Feature", "id": f"r{i}", "properties": {"objectType": "annotation", "name": name},
         "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}
        for i, (name, (x0, y0, x1, y1)) in enumerate(REGIONS.items())
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def typed_run(tmp_path_factory) -> Path:
    if not BUNDLED["typed"].path.is_file():
        pytest.skip(f"the typed model {BUNDLED['typed'].path} is not in this checkout")
    tmp = tmp_path_factory.mktemp("typed-summary")
    rc = main([
        "segment", str(HE_GLANDS), "--out", str(tmp / "out"), "--model", "typed", "--mpp", "0.25", "--device", "cpu",
        "--no-tissue-mask", "--no-progress", "--formats", "geojson,zarr,table", "--regions", str(_regions_file(tmp / "regions.geojson")),
    ])
    assert rc == 0
    return tmp / "out" / HE_GLANDS.stem


def _expected(table, names: list[str], mpp: float, rows: np.ndarray) -> dict:
    """The summary's figures from the table alone: every pair of centroids, distances in µm."""
    xy = table[["centroid_x", "centroid_y"]].to_numpy(np.float64) * mpp
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)  # a nucleus is not its own neighbour
    cls = table["class_name"].to_numpy()
    area = table["area_um2"].to_numpy(np.float64)
    out = {"classes": {}, "near_counts": {}}
    for a in names:
        sel = rows & (cls == a)
        out["classes"][a] = {"nuclei": int(sel.sum()), "mean": float(area[sel].mean()) if sel.any() else None,
                             "median": float(np.median(area[sel])) if sel.any() else None}
        out["near_counts"][a] = {b: int((d[sel][:, cls == b] <= 20.0).any(1).sum()) for b in names}
    return out


def _check(got: dict, want: dict, names: list[str]) -> None:
    for a in names:
        g, w = got["classes"][a], want["classes"][a]
        assert g["nuclei"] == w["nuclei"], a
        if w["nuclei"]:
            assert g["mean_area_um2"] == pytest.approx(w["mean"], abs=0.006) and g["median_area_um2"] == pytest.approx(w["median"], abs=0.006), a
        else:
            assert g["mean_area_um2"] is None and g["median_area_um2"] is None
        assert got["near_counts"][a] == want["near_counts"][a], a
        for b in names:
            frac = got["near_fraction"][a][b]
            assert frac == (pytest.approx(want["near_counts"][a][b] / w["nuclei"], abs=5e-5) if w["nuclei"] else None)


def test_class_summary_matches_an_independent_computation_from_the_table(typed_run):
    import pandas as pd

    report = json.loads((typed_run / f"{HE_GLANDS.stem}_report.json").read_text())
    names = list(report["class_counts"])
    assert names == ["Other", "Inflammatory", "Epithelial", "Spindle"]
    summary = report["class_summary"]
    assert summary["near_um"] == 20.0
    table = pd.read_parquet(typed_run / f"{HE_GLANDS.stem}_nuclei.parquet")
    assert len(table) == report["nuclei"] > 100
    present = [n for n in names if report["class_counts"][n]]
    assert len(present) >= 2, f"the fixture should give several types: {report['class_counts']}"
    _check(summary, _expected(table, names, report["mpp_used"], np.ones(len(table), bool)), names)
    assert {a: c["nuclei"] for a, c in summary["classes"].items()} == report["class_counts"]
    # the headline: inflammatory nuclei near an epithelial one, in words
    head = summary["headline"]
    assert (head["of"], head["near"]) == ("Inflammatory", "Epithelial")
    assert head["near_nuclei"] == summary["near_counts"]["Inflammatory"]["Epithelial"] and head["nuclei"] == report["class_counts"]["Inflammatory"]
    if head["nuclei"]:  # this fixture's glands give none; test_the_headline_in_words checks the sentence
        assert head["text"] == f"{100 * head['near_nuclei'] / head['nuclei']:.0f}% of inflammatory nuclei ({head['near_nuclei']:,} of {head['nuclei']:,}) lie within 20 µm of an epithelial nucleus"
    else:
        assert head["fraction"] is None and head["text"] == "no inflammatory nuclei found, so none within 20 µm of an epithelial nucleus"
    # per region: the nuclei whose prompt lies inside it (edge included), overlaps counted in each
    assert [r["label"] for r in summary["regions"]] == list(REGIONS)
    for r, (x0, y0, x1, y1) in zip(summary["regions"], REGIONS.values()):
        px, py = table["point_x"].to_numpy(), table["point_y"].to_numpy()
        inside = (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
        assert sum(c["nuclei"] for c in r["classes"].values()) == int(inside.sum()) > 0
        _check(r, _expected(table, names, report["mpp_used"], inside), names)
        region = next(g for g in report["regions"]["regions"] if g["label"] == r["label"])
        assert {a: c["nuclei"] for a, c in r["classes"].items()} == region["class_counts"]  # the same nuclei as its counts


def test_near_matrix_excludes_the_nucleus_itself_and_counts_the_edge():
    xy = np.array([[0.0, 0.0], [20.0, 0.0], [100.0, 0.0], [100.0, 0.0], [300.0, 0.0]])
    cls = np.array([0, 1, 0, 0, 1])
    near = near_matrix(xy, cls, 3, 20.0)
    assert near.tolist() == [
        [False, True, False],  # 20 away from a class-1 nucleus: within (edge counts); alone in class 0
        [True, False, False],
        [True, False, False],  # two nuclei at one centre are each other's neighbours
        [True, False, False],
        [False, False, False],
    ]
    assert not ClassSummaryBuilder.wanted(["nucleus"])  # an untyped run's report gets no class_summary


def test_the_headline_in_words_and_per_region():
    """Two inflammatory nuclei, one 19 µm from an epithelial one (0.5 µm/px), the other 40 µm away."""
    names = ["Other", "Inflammatory", "Epithelial", "Spindle"]
    builder = ClassSummaryBuilder(names, mpp=0.5, region_labels=["left", "right"])
    xy = np.array([[0.0, 0.0], [38.0, 0.0], [1000.0, 0.0], [1080.0, 0.0]])
    builder.add(xy[:2], [1, 2], [30.0, 50.0], np.array([[True, False], [True, False]]))
    builder.add(xy[2:], [1, 2], [20.0, np.nan], np.array([[False, True], [False, True]]))
    s = builder.build()
    assert s["headline"]["text"] == "50% of inflammatory nuclei (1 of 2) lie within 20 µm of an epithelial nucleus"
    assert s["classes"]["Inflammatory"] == {"nuclei": 2, "mean_area_um2": 25.0, "median_area_um2": 25.0}
    assert s["classes"]["Epithelial"] == {"nuclei": 2, "mean_area_um2": 50.0, "median_area_um2": 50.0}  # a missing area is left out
    assert s["near_fraction"]["Epithelial"] == {"Other": 0.0, "Inflammatory": 0.5, "Epithelial": 0.0, "Spindle": 0.0}
    assert s["near_fraction"]["Other"] == dict.fromkeys(names)  # no nuclei: no share
    assert [r["headline"]["fraction"] for r in s["regions"]] == [1.0, 0.0]


PROBE = """<!DOCTYPE html><html><head><title>probe</title></head><body><pre id="out">not loaded</pre>
<iframe id="f" src="PAGE" style="width:1400px;height:9000px"></iframe><script>
document.getElementById('f').addEventListener('load', function () {
  var d = this.contentDocument, rows = [];
  d.querySelectorAll('img').forEach(function (i) {
    var f = i.closest('figure'), c = f ? f.querySelector('figcaption') : null;
    rows.push({src: i.getAttribute('src'), natural: i.naturalWidth, shown: i.clientWidth, caption: c ? c.textContent : ''});
  });
  var t = d.querySelector('.typesum'), h = t ? t.querySelector('.headline') : null;
  rows.push({types: t ? t.getBoundingClientRect().height : 0, headline: h ? h.textContent : null,
             cells: t ? Array.from(t.querySelectorAll('table')[0].rows).map(function (r) { return r.textContent; }) : []});
  document.getElementById('out').textContent = JSON.stringify(rows);
});
</script></body></html>"""


def test_the_run_page_shows_the_types_and_the_insets_in_a_browser(typed_run, tmp_path):
    report = json.loads((typed_run / f"{HE_GLANDS.stem}_report.json").read_text())
    assert main(["report", str(typed_run.parent)]) == 0
    page = typed_run.parent / "report.html"
    text = page.read_text(encoding="utf-8")
    summary = report["class_summary"]
    assert "Nuclear types: size and neighbours" in text and summary["headline"]["text"] in text
    assert "By region (2)" in text
    pictures = json.loads((typed_run / f"{HE_GLANDS.stem}_pictures.json").read_text())
    assert len(pictures["insets"]) >= 2 and all(i["colors"] == "class colours" for i in pictures["insets"])
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if chromium is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    probe = typed_run.parent / "probe.html"
    probe.write_text(PROBE.replace("PAGE", "./report.html"), encoding="utf-8")
    done = subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1500,9200", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    import html

    rows = json.loads(html.unescape(done.stdout.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]))
    insets = [r for r in rows if "src" in r and "_inset_" in r["src"]]
    assert len(insets) == len(pictures["insets"])
    for r, inset in zip(insets, pictures["insets"]):
        assert r["natural"] == inset["size"][0] == 256 and r["shown"] == 256  # loaded, shown at its own pixels
        x0, y0, w0, h0 = inset["box_level0"]
        assert f"level-0 x {x0:,.0f}–{x0 + w0:,.0f}, y {y0:,.0f}–{y0 + h0:,.0f}" in r["caption"] and "0.25 µm/px" in r["caption"]
    shown = rows[-1]
    assert shown["types"] > 50 and shown["headline"] == summary["headline"]["text"]
    for name, c in summary["classes"].items():  # one row per type: its count and mean area as the report has them
        assert any(cell.startswith(name) and f"{c['nuclei']:,}" in cell for cell in shown["cells"]), (name, shown["cells"])
