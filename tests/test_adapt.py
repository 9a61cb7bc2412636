"""`promptnucseg adapt`: clicks -> held-out split, crops that keep points on their nuclei, the
held-out count, and the command end to end on a real image with QuPath-style GeoJSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from promptnucseg.cli import main
from promptnucseg.models.config import AugmentConfig
from promptnucseg.models.interface import ClickedRegion
from promptnucseg.models.training.adapt import AdaptSettings, Detection, _crop, held_out_detection, split_region

KUMAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kumar" / "train"
IMAGE = "TCGA-18-5592-01Z-00-DX1"  # a validation image of the bundled model
needs_kumar = pytest.mark.skipif(not (KUMAR / "images" / f"{IMAGE}.png").is_file(), reason="needs the Kumar training images of ../shared/data (not in a user's clone)")


def _region(h: int = 256, w: int = 256, n: int = 40, seed: int = 0) -> ClickedRegion:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(4, [w - 5, h - 5], (n, 2)).astype(np.float32)
    img = np.full((h, w, 3), 230, np.uint8)
    for x, y in np.rint(pts).astype(int):
        img[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = (60, 20, 120)  # a dark dot on each "nucleus"
    return ClickedRegion("r", img, np.ones((h, w), bool), pts, np.zeros(n, np.int64))


def test_split_holds_out_one_cell_in_four_and_hides_it_from_training():
    region = _region()
    split = split_region(region, 0, AdaptSettings(cell=128))
    assert split.holdout.mean() == pytest.approx(0.25)  # 2x2 cells, one held out
    assert (split.train.image[split.holdout] == 255).all()  # nothing of the held-out cell is seen
    assert not split.train.inside[split.holdout].any()
    assert len(split.train.points) + split.holdout_points.sum() == len(region.points)
    # another region index shifts the pattern, so single-cell regions take turns
    assert not np.array_equal(split_region(region, 1, AdaptSettings(cell=128)).holdout, split.holdout)


def test_crops_keep_every_point_on_its_dot_through_turns_flips_and_scale():
    region = _region(n=30, seed=3)
    aug = AugmentConfig(flip_rot=True, brightness=0, contrast=0, saturation=0, hue=0, blur_prob=0, noise_prob=0, scale_range=(0.8, 1.25))
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(40):
        img, pts, cls = _crop(region, 128, rng, aug)
        assert img.shape == (128, 128, 3) and len(pts) == len(cls)
        inner = pts[(pts >= 3).all(1) & (pts <= 124).all(1)]
        for x, y in np.rint(inner).astype(int):
            assert img[y, x].mean() < 150, "a point left its nucleus"
        seen += len(inner)
    assert seen > 50


def test_held_out_counts_only_the_held_out_cells():
    region = _region(n=40, seed=5)
    split = split_region(region, 0, AdaptSettings(cell=128))
    held = region.points[split.holdout_points]
    truth = lambda image: (region.points.astype(np.float64), np.ones(len(region.points)))  # noqa: E731
    assert held_out_detection(truth, region, split, 12.0) == Detection(len(held), 0, 0)
    # a finder that finds only the training points and adds one stray point in a held-out cell
    ys, xs = np.nonzero(split.holdout)
    far = [(x, y) for x, y in zip(xs[::97], ys[::97]) if np.hypot(*(region.points - (x, y)).T).min() > 13]
    found = np.concatenate([region.points[~split.holdout_points], np.array(far[:1], np.float32)])
    partial = lambda image: (found.astype(np.float64), np.ones(len(found)))  # noqa: E731
    got = held_out_detection(partial, region, split, 12.0)
    assert got.tp == 0 and got.fn == len(held) and got.fp == 1


def _qupath_export(path: Path, box: tuple[int, int, int, int], points: np.ndarray, extra_points: np.ndarray | None = None) -> None:
    """What QuPath's File > Export objects as GeoJSON writes for a rectangle annotation and point clicks."""
    x0, y0, x1, y1 = box
    feats = [{"type": "Feature", "id": "a1", "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
              "properties": {"objectType": "annotation", "name": "clicked", "classification": {"name": "Region*", "color": [0, 0, 180]}}}]
    pts = points if extra_points is None else np.concatenate([points, extra_points])
    feats.append({"type": "Feature", "id": "p1", "geometry": {"type": "MultiPoint", "coordinates": pts.tolist()},
                  "properties": {"objectType": "annotation", "classification": {"name": "Nucleus", "color": [200, 0, 0]}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


@pytest.fixture(scope="module")
def clicked_image(tmp_path_factory):
    from promptnucseg.models.data.datasets import instance_points

    root = tmp_path_factory.mktemp("clicks")
    labels = tifffile.imread(KUMAR / "labels" / f"{IMAGE}.tif")
    box = (0, 0, 512, 512)
    _, cents = instance_points(labels)
    q = cents + 0.5  # pixel-index centroids -> QuPath's continuous coordinates
    qupath = q[(q[:, 0] > box[0]) & (q[:, 0] < box[2]) & (q[:, 1] > box[1]) & (q[:, 1] < box[3])]
    export = root / "clicks.geojson"
    _qupath_export(export, box, qupath)
    return root, export, box, qupath


@needs_kumar
def test_adapt_end_to_end_writes_a_model_that_segments_and_says_where_it_came_from(clicked_image, tmp_path, capsys):
    _, export, _, qupath = clicked_image
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", str(KUMAR / "images" / f"{IMAGE}.png"), "--points", str(export), "--out", str(out), "--mpp", "0.25",
               "--max-steps", "2", "--force", "--no-progress", "--threads", "2"])
    assert rc == 0 and out.is_file()
    report = json.loads((tmp_path / "adapted.adapt.json").read_text())
    assert report["written"] and report["steps"] == 2
    assert report["train_points"] + report["held_out_points"] == len(qupath)
    assert report["source_model"]["sha256"] and report["slides"][0]["points"]["used"] == len(qupath)
    assert not (tmp_path / "adapted.pt.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.adapt.json", "adapted.pt"]  # nothing else written
    from promptnucseg.models.interface import load_predictor

    predictor = load_predictor(str(out), device="cpu")
    assert predictor.describe()["adaptation"]["source_model"]["bundled"] == "default"
    from PIL import Image

    tile = np.asarray(Image.open(KUMAR / "images" / f"{IMAGE}.png").convert("RGB"))[512:768, 512:768]
    assert len(predictor.predict([tile])[0]) > 20
    capsys.readouterr()
    assert main(["models", "--path", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "adapted   from default" in listing and "held out" in listing


@needs_kumar
def test_adapt_refuses_bad_input_before_the_model_loads(clicked_image, tmp_path, capsys):
    root, export, box, qupath = clicked_image
    image = str(KUMAR / "images" / f"{IMAGE}.png")

    def refused(args: list[str]) -> str:
        capsys.readouterr()
        assert main(["adapt", image, "--out", str(tmp_path / "a.pt"), "--no-progress", *args]) == 2
        assert not (tmp_path / "a.pt").exists()
        return capsys.readouterr().err

    assert "--mpp" in refused(["--points", str(export)])  # a PNG records no microns per pixel
    stray = root / "stray.geojson"
    _qupath_export(stray, box, qupath, extra_points=np.array([[900.5, 900.5], [950.5, 20.5]]))
    assert f"2 of {len(qupath) + 2} points lie outside every region" in refused(["--points", str(stray), "--mpp", "0.25"])
    only_points = root / "points_only.geojson"
    only_points.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.5, 10.5]}, "properties": {"objectType": "annotation"}}]}))
    assert "no polygon regions" in refused(["--points", str(only_points), "--mpp", "0.25"])
    empty = root / "empty.geojson"
    _qupath_export(empty, box, qupath)
    data = json.loads(empty.read_text())
    data["features"].insert(0, {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[600, 600], [700, 600], [700, 700], [600, 700], [600, 600]]]},
                                "properties": {"objectType": "annotation", "name": "nothing clicked"}})
    empty.write_text(json.dumps(data))
    assert "hold no points" in refused(["--points", str(empty), "--mpp", "0.25"])
    segmentor_only = Path(__file__).resolve().parents[1] / "models" / "weights" / "candidates" / "v3_segmentor.pt"
    assert "nothing to adapt" in refused(["--points", str(export), "--mpp", "0.25", "--model", str(segmentor_only)])
    (tmp_path / "a.pt").write_bytes(b"kept")
    capsys.readouterr()
    assert main(["adapt", image, "--points", str(export), "--out", str(tmp_path / "a.pt"), "--mpp", "0.25"]) == 2
    assert "exists already" in capsys.readouterr().err and (tmp_path / "a.pt").read_bytes() == b"kept"
