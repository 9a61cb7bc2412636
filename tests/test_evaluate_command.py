"""`promptnucseg evaluate` end to end on real files, and the label-map reader behind it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.models.evaluation.label_io import LabelMapError, read_label_map


def box(shape, *rects):
    m = np.zeros(shape, np.int32)
    for label, y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = label
    return m


def save(path: Path, arr: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".png":
        Image.fromarray(arr.astype(np.uint16)).save(path)
    else:
        tifffile.imwrite(path, arr, compression="zlib")
    return path


# --- label_io ----------------------------------------------------------------------------


def test_reads_each_format_back_exactly(tmp_path):
    labels = np.arange(20 * 30, dtype=np.int32).reshape(20, 30) % 700  # ids above 255
    for name, arr in (("a.npy", labels), ("b.png", labels.astype(np.uint16)), ("c.tif", labels), ("d.tiff", labels.astype(np.uint16))):
        got = read_label_map(save(tmp_path / name, arr))
        assert got.dtype == np.int32 and np.array_equal(got, labels), name


def test_accepts_integral_floats_and_singleton_axes(tmp_path):
    np.save(tmp_path / "f.npy", np.array([[0.0, 3.0], [3.0, 1.0]]))
    assert read_label_map(tmp_path / "f.npy").tolist() == [[0, 3], [3, 1]]
    tifffile.imwrite(tmp_path / "s.tif", np.ones((1, 4, 5), np.uint16))
    assert read_label_map(tmp_path / "s.tif").shape == (4, 5)
    np.save(tmp_path / "row.npy", np.array([[0, 2, 2]]))  # a 1-pixel-high map stays 2-D
    assert read_label_map(tmp_path / "row.npy").tolist() == [[0, 2, 2]]


@pytest.mark.parametrize(
    "name, writer, message",
    [
        ("rgb.png", lambda p: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p), "not a 2-D label map"),
        ("stack.npy", lambda p: np.save(p, np.zeros((2, 4, 4), np.int32)), "not a 2-D label map"),
        ("half.npy", lambda p: np.save(p, np.array([[0.5, 1.0]])), "non-integer"),
        ("neg.tif", lambda p: tifffile.imwrite(p, np.array([[0, -2]], np.int32)), "negative"),
        ("broken.tif", lambda p: p.write_bytes(b"II*\x00garbage"), "cannot be read|no pixels"),
        ("broken.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "cannot be read"),
        ("labels.jpg", lambda p: p.write_bytes(b"\xff\xd8"), "unsupported label-map format"),
        ("missing.npy", lambda p: None, "no such file"),
    ],
)
def test_bad_files_name_themselves(tmp_path, name, writer, message):
    path = tmp_path / name
    writer(path)
    with pytest.raises(LabelMapError, match=message) as err:
        read_label_map(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


# --- evaluate --pred --gt ------------------------------------------------------------------

# GT and prediction of three images, in mixed formats. Expected values (see test_metrics):
#   perfect: AJI 1, PQ 1.   split: one 40-px nucleus cut 24 + 16 -> AJI 3/7, DQ 2/3, SQ .6, PQ .4.
#   three: the 3-nucleus case -> AJI 56/102, DQ 4/7, SQ (0.625 + 2/3)/2.
PERFECT = box((10, 16), (1, 0, 4, 0, 5), (2, 6, 10, 0, 10))
SPLIT_GT = box((10, 16), (1, 0, 4, 0, 10))
SPLIT_PRED = box((10, 16), (4, 0, 4, 0, 6), (9, 0, 4, 6, 10))
THREE_GT = box((10, 16), (1, 0, 4, 0, 5), (2, 0, 4, 6, 12), (3, 6, 10, 0, 10))
THREE_PRED = box((10, 16), (1, 0, 4, 0, 8), (2, 0, 4, 8, 12), (3, 6, 10, 0, 5), (4, 7, 9, 12, 15))


@pytest.fixture
def folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    save(gt / "perfect.npy", PERFECT)
    save(pred / "perfect.tif", PERFECT * 5)  # other ids, same nuclei
    save(gt / "split.png", SPLIT_GT)
    save(pred / "split.npy", SPLIT_PRED)
    save(gt / "three.tif", THREE_GT)
    save(pred / "three.png", THREE_PRED)
    (pred / "notes.txt").write_text("ignored: not a label map")
    return gt, pred


def test_scores_two_folders_and_writes_json(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "report" / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {im["name"]: im for im in report["images"]}
    assert list(rows) == ["perfect", "split", "three"]
    assert rows["perfect"]["aji"] == 1.0 and rows["perfect"]["pq"] == 1.0
    assert rows["split"]["aji"] == pytest.approx(3 / 7) and rows["split"]["pq"] == pytest.approx(0.4)
    assert rows["split"]["dq"] == pytest.approx(2 / 3) and rows["split"]["sq"] == pytest.approx(0.6)
    sq3 = (0.625 + 2 / 3) / 2
    assert rows["three"]["aji"] == pytest.approx(56 / 102) and rows["three"]["pq"] == pytest.approx(4 / 7 * sq3)
    assert (rows["three"]["tp"], rows["three"]["fp"], rows["three"]["fn"]) == (2, 2, 1)
    assert (rows["three"]["n_true"], rows["three"]["n_pred"]) == (3, 4)
    assert report["mean"]["aji"] == pytest.approx((1 + 3 / 7 + 56 / 102) / 3)
    assert report["mean"]["pq"] == pytest.approx((1 + 0.4 + 4 / 7 * sq3) / 3)
    assert report["n_images"] == report["n_scored"] == 3 and report["mode"] == "label-maps"

    lines = capsys.readouterr().out.strip().splitlines()
    table = [ln for ln in lines if ln and not ln.startswith("-")]
    assert table[0].split()[:5] == ["image", "AJI", "DQ", "SQ", "PQ"]
    assert [ln.split()[0] for ln in table[1:]] == ["perfect", "split", "three", "mean"]
    assert table[2].split()[1:5] == [f"{3 / 7:.4f}", f"{2 / 3:.4f}", "0.6000", "0.4000"]
    # aligned: every metric column ends at the same character in every row
    pq_end = table[0].index("PQ") + 2
    assert all(ln[pq_end - 6 : pq_end].strip() for ln in table[1:])


def test_an_image_with_nothing_in_either_map_is_null_and_skipped(folders, tmp_path):
    gt, pred = folders
    save(gt / "blank.npy", np.zeros((10, 16), np.int32))
    save(pred / "blank.npy", np.zeros((10, 16), np.int32))
    out = tmp_path / "s.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    report = json.loads(out.read_text())  # strict JSON: no NaN tokens
    blank = next(im for im in report["images"] if im["name"] == "blank")
    assert blank["aji"] is None and blank["pq"] is None
    assert report["n_images"] == 4 and report["n_scored"] == 3
    assert report["mean"]["aji"] == pytest.approx((1 + 3 / 7 + 56 / 102) / 3)


def test_missing_counterpart_is_named(folders, capsys):
    gt, pred = folders
    (pred / "split.npy").unlink()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "no prediction for split" in err and str(pred) in err and "Fix:" in err


def test_extra_prediction_without_ground_truth_is_named(folders, capsys):
    gt, pred = folders
    save(pred / "stray.npy", PERFECT)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "no ground truth for stray" in err and str(gt) in err


def test_two_files_with_one_stem_are_refused(folders, capsys):
    gt, pred = folders
    save(gt / "split.npy", SPLIT_GT)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "two label maps for 'split'" in capsys.readouterr().err


def test_shape_mismatch_names_both_files(folders, capsys):
    gt, pred = folders
    save(pred / "split.npy", np.zeros((10, 15), np.int32))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert str(pred / "split.npy") in err and str(gt / "split.png") in err


def test_bad_label_file_stops_with_its_name(folders, capsys):
    gt, pred = folders
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(pred / "three.png")
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert str(pred / "three.png") in capsys.readouterr().err


def test_no_mode_or_both_modes_is_an_error(folders, tmp_path, capsys):
    gt, pred = folders
    assert main(["evaluate"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--data", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(gt)]) == 2
    assert "not a folder" in capsys.readouterr().err
