"""`promptnucseg evaluate` end to end on real files, and the label-map reader behind it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from promptnucseg.cli import main
from promptnucseg.models.data.label_maps import LabelMapError, read_label_map


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


# --- label_maps --------------------------------------------------------------------------


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
    assert [ln.split()[0] for ln in table[1:]] == ["perfect", "split", "three", "mean", "by"]
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


# --- evaluate --data --weights (a real, tiny, untrained model over a real dataset folder) ----


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A real two-class model file from export-model's code path: small random networks whose
    prompter is biased towards the two nucleus classes, so predictions exist; what they score
    is beside the point."""
    torch = pytest.importorskip("torch")
    from promptnucseg.models.bundle import bundle_model
    from promptnucseg.models.checkpoints import save_checkpoint
    from promptnucseg.models.config import ModelConfig, PrompterConfig, SegmentorConfig, to_dict
    from promptnucseg.models.prompter import Prompter
    from promptnucseg.models.segmentor import build_segmentor

    torch.manual_seed(0)
    cfg = ModelConfig(
        class_names=("tumour", "immune"),
        class_colors=((200, 0, 0), (0, 0, 200)),
        prompter=PrompterConfig(backbone="resnet18", fpn_channels=32, mask_filter=False, num_classes=2),
        segmentor=SegmentorConfig(arch="sam_cnn_light", embed_dim=32, decoder_mlp_dim=64, encoder_stride=16),
    )
    prompter = Prompter(cfg.prompter)
    with torch.no_grad():
        prompter.class_head[-1].bias[:] = torch.tensor([3.0, 3.0, -3.0])
    folder = tmp_path_factory.mktemp("model")
    base = {"config": {"model": to_dict(cfg)}}
    save_checkpoint(folder / "p.pt", {"kind": "prompter", "state_dict": prompter.state_dict(), **base})
    save_checkpoint(folder / "s.pt", {"kind": "segmentor", "state_dict": build_segmentor(cfg.segmentor).state_dict(), **base})
    return bundle_model(folder / "p.pt", folder / "s.pt", folder / "model.pt", half=False)


@pytest.fixture
def dataset_folder(tmp_path):
    """images/ + labels/ + classes/ with two images of dark discs on a pink background, classed
    alternately tumour (1) / immune (2), class names in classes.json."""
    root = tmp_path / "ds"
    for sub in ("images", "labels", "classes"):
        (root / sub).mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(["tumour", "immune"]))
    rng = np.random.default_rng(3)
    for name, (h, w), n in (("alpha", (96, 128), 6), ("beta", (64, 64), 3)):
        labels = np.zeros((h, w), np.int32)
        yy, xx = np.mgrid[:h, :w]
        for k in range(n):
            cy, cx = rng.integers(8, h - 8), rng.integers(8, w - 8)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 10 * (k + 1)
        image = np.where(labels[..., None] > 0, [70, 40, 120], [230, 180, 200]).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype(np.uint16), compression="zlib")
        present = np.unique(labels)[1:]
        (root / "classes" / f"{name}.json").write_text(json.dumps({str(i): 1 + k % 2 for k, i in enumerate(present)}))
    return root


def test_model_mode_scores_what_it_predicts(tiny_model_file, dataset_folder, tmp_path, capsys):
    saved, out = tmp_path / "pred", tmp_path / "model.json"
    rc = main(["evaluate", "--weights", str(tiny_model_file), "--data", str(dataset_folder), "--device", "cpu", "--save-pred", str(saved), "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "model" and [im["name"] for im in report["images"]] == ["alpha", "beta"]
    assert report["model"]["weights_sha256"]
    n_true = [im["n_true"] for im in report["images"]]
    n_true_files = [len(np.unique(tifffile.imread(dataset_folder / "labels" / f"{s}.tif"))) - 1 for s in ("alpha", "beta")]
    assert n_true == n_true_files
    det = report["detection"]
    assert det["tp"] + det["fn"] == sum(n_true)  # every GT centroid is matched or missed
    assert det["tp"] + det["fp"] == sum(im["n_pred"] for im in report["images"]) > 0  # every nucleus found has a point
    # class F1: model and dataset name the same two classes; within each class every GT
    # nucleus is matched or missed, and every predicted point (class 0 or 1) counted once
    per = det["per_class"]
    assert list(per) == ["tumour", "immune"]
    assert per["tumour"]["tp"] + per["tumour"]["fn"] == 3 + 2  # ids 1st, 3rd, 5th of alpha; 1st, 3rd of beta
    assert per["immune"]["tp"] + per["immune"]["fn"] == 3 + 1
    assert sum(c["tp"] + c["fp"] for c in per.values()) == det["tp"] + det["fp"]
    f1s = [c["f1"] for c in per.values() if c["f1"] is not None]
    assert det["mean_class_f1"] == pytest.approx(sum(f1s) / len(f1s))
    printed = capsys.readouterr().out
    assert "class F1" in printed and "HoVer-Net F_d" in printed and "PanNuke mPQ" in printed
    # HoVer-Net's type scores: every GT nucleus is paired or unpaired once, every prediction too
    types = report["types"]
    assert types["paired"] + types["unpaired_true"] == sum(n_true)
    assert types["paired"] + types["unpaired_pred"] == sum(im["n_pred"] for im in report["images"])
    assert sum(map(sum, types["confusion"]["counts"])) == types["paired"]
    assert list(types["f_t"]) == list(types["class_pq"]) == ["tumour", "immune"]
    assert types["mpq"] is None or 0 <= types["mpq"] <= 1

    # the saved predictions, scored as label-map folders, give the very same numbers
    again = tmp_path / "files.json"
    assert main(["evaluate", "--pred", str(saved), "--gt", str(dataset_folder / "labels"), "--json", str(again)]) == 0
    files_report = json.loads(again.read_text())
    assert files_report["images"] == report["images"] and files_report["mean"] == report["mean"]


def test_model_mode_image_subset_and_unknown_names(tiny_model_file, dataset_folder, tmp_path, capsys):
    out = tmp_path / "one.json"
    assert main(["evaluate", "--weights", str(tiny_model_file), "--data", str(dataset_folder), "--images", "beta", "--device", "cpu", "--json", str(out)]) == 0
    assert [im["name"] for im in json.loads(out.read_text())["images"]] == ["beta"]
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(tiny_model_file), "--data", str(dataset_folder), "--images", "beta,gamma", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no image named gamma" in err and "alpha" in err


def test_image_patterns_and_the_majority_class_baseline(tiny_model_file, dataset_folder, tmp_path, capsys):
    """--images takes patterns; the baseline gives every detected nucleus the training split's
    most frequent class, counted over the images not scored (here alpha: 3 tumour, 3 immune
    -> the first, tumour, by argmax), and changes the types only."""
    model_json, base_json = tmp_path / "model.json", tmp_path / "base.json"
    common = ["evaluate", "--model", str(tiny_model_file), "--data", str(dataset_folder), "--images", "b*", "--device", "cpu"]
    assert main([*common, "--json", str(model_json)]) == 0
    assert main([*common, "--type-baseline", "majority", "--json", str(base_json)]) == 0
    model, base = json.loads(model_json.read_text()), json.loads(base_json.read_text())
    assert [im["name"] for im in base["images"]] == ["beta"]
    assert base["type_baseline"]["class"] == "tumour" and base["type_baseline"]["training_class_counts"] == {"tumour": 3, "immune": 3}
    assert base["images"] == model["images"] and base["detection"]["f1"] == model["detection"]["f1"]  # same nuclei
    assert all(row[1] == 0 for row in base["types"]["confusion"]["counts"])  # nothing predicted immune
    assert base["types"]["f_t"]["immune"] == 0.0
    assert "baseline 'majority'" in capsys.readouterr().out
    # without a training split (every image scored) the baseline cannot be formed
    assert main(["evaluate", "--model", str(tiny_model_file), "--data", str(dataset_folder), "--device", "cpu", "--type-baseline", "majority"]) == 2
    assert "needs a training split" in capsys.readouterr().err


def test_model_mode_bad_weights_file_is_named(dataset_folder, tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--weights", str(bad), "--data", str(dataset_folder), "--device", "cpu"]) == 2
    assert str(bad) in capsys.readouterr().err


def _two_kinds(rng, n_big: int, n_small: int):
    """An image of big dark-blue round nuclei (class 0) and small pink elongated ones (class 1)."""
    h = w = 128
    image = np.full((h, w, 3), (235, 220, 225), np.uint8)
    inst = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    classes, k = {}, 0
    for cls, n in ((0, n_big), (1, n_small)):
        for _ in range(n):
            cy, cx = rng.integers(10, h - 10, 2)
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36 if cls == 0 else ((yy - cy) / 1.5) ** 2 + ((xx - cx) / 5) ** 2 <= 1
            free = shape & (inst == 0)
            if free.sum() < 5:
                continue
            k += 1
            inst[free] = k
            image[free] = (60, 40, 140) if cls == 0 else (200, 110, 150)
            classes[k] = cls
    return image, inst, classes


def test_knn_baseline_learns_size_and_colour_from_the_training_split_only(tmp_path):
    from promptnucseg.models.data.datasets import NucleusSample
    from promptnucseg.models.evaluation.baselines import BaselineInputError, fit_baseline

    rng = np.random.default_rng(0)
    samples = [NucleusSample(f"im{i}", *_two_kinds(rng, 6, 12)) for i in range(4)]

    class Samples(list):  # a data set's sequence interface, over samples built here
        root, class_names = tmp_path, ("big", "small")

    data = Samples(samples)
    knn = fit_baseline("knn", data, held_out=[3])
    image, inst, truth = samples[3].image, samples[3].instances, samples[3].instance_classes
    got = knn.classify(image, inst, int(inst.max()))
    assert got.tolist() == [truth[k] for k in range(1, int(inst.max()) + 1)]  # the two kinds are told apart
    majority = fit_baseline("majority", data, held_out=[3])
    assert set(majority.classify(image, inst, int(inst.max())).tolist()) == {1}  # more small ones in training
    assert majority.describe(data.class_names)["class"] == "small" and "k" in knn.describe(data.class_names)
    with pytest.raises(BaselineInputError, match="needs a training split"):
        fit_baseline("knn", data, held_out=[0, 1, 2, 3])


def test_model_mode_on_pannuke_adds_its_tissue_averaged_bpq(tiny_model_file, tmp_path, capsys):
    """A PanNuke-layout fold (images.npy 0..255 floats, masks.npy, types.npy): the report adds
    PanNuke's own numbers, per image, then per tissue, then over tissues."""
    from promptnucseg.models.data.datasets import open_dataset
    from promptnucseg.models.evaluation import pannuke_bpq, tissue_average

    root = tmp_path / "fold1"
    root.mkdir()
    n, size = 3, 64
    images = np.full((n, size, size, 3), [230.0, 180.0, 200.0])
    masks = np.zeros((n, size, size, 6))
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(5)
    for i in range(n):
        for k in range(2 + i):
            cy, cx = rng.integers(8, size - 8, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
            masks[i, disc, k % 5] = k + 1
            images[i, disc] = [70.0, 40.0, 120.0]
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)
    np.save(root / "images.npy", images)
    np.save(root / "masks.npy", masks)
    np.save(root / "types.npy", np.array(["Breast", "Colon", "Breast"]))
    saved, out = tmp_path / "pred", tmp_path / "pannuke.json"
    assert main(["evaluate", "--weights", str(tiny_model_file), "--data", str(root), "--device", "cpu", "--save-pred", str(saved), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    p = report["pannuke"]
    assert set(p["per_tissue"]) == {"Breast", "Colon"} and p["mpq"] is None  # the tiny model's classes are not PanNuke's
    ds = open_dataset(root)
    bpq = [pannuke_bpq(ds[i].instances, tifffile.imread(saved / f"{ds.names[i]}.tif")) for i in range(n)]
    assert p["bpq"] == pytest.approx(tissue_average(bpq, ["Breast", "Colon", "Breast"]))
    assert p["per_tissue"]["Colon"]["bpq"] == pytest.approx(bpq[1])
    assert "PanNuke (mean over 2 tissues): bPQ" in capsys.readouterr().out
