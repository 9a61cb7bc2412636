"""Dataset readers on the real shared data (skipped when absent) and on small files written here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptnucseg.models.data import NucleusDataset, instance_points, open_dataset
from conftest import HE, HE_CELLS, HE_EOSIN, HE_GLANDS, SHARED_DATA, need

DATA = SHARED_DATA


def _need(sub: str) -> Path:
    return need(DATA / sub)  # each reader's check is on its own real data set


def test_instance_points_hand_made_map():
    inst = np.zeros((6, 8), np.int32)
    inst[1:3, 1:3] = 7  # 2x2 square: centre (x=1.5, y=1.5)
    inst[4, 2:7] = 3  # row 4, cols 2..6: centre (4, 4)
    inst[0, 7] = 12  # single pixel at (x=7, y=0)
    ids, pts = instance_points(inst)
    assert ids.dtype == np.int32 and pts.dtype == np.float32
    assert ids.tolist() == [3, 7, 12]
    np.testing.assert_allclose(pts, [[4.0, 4.0], [1.5, 1.5], [7.0, 0.0]])
    ids, pts = instance_points(np.zeros((4, 4), np.uint16))
    assert ids.shape == (0,) and pts.shape == (0, 2)


def test_folder_kumar_real():
    ds = open_dataset(_need("kumar/train"))
    assert isinstance(ds, NucleusDataset) and len(ds) == 16
    assert ds.class_names == ("nucleus",) and ds.mpp == 0.25
    s = ds[0]
    assert s.name == ds.names[0] and s.image.dtype == np.uint8 and s.image.shape == (1000, 1000, 3)
    assert s.instances.dtype == np.int32 and s.instances.shape == (1000, 1000)
    assert s.instance_classes is None
    ids, pts = instance_points(s.instances)
    assert len(ids) > 100 and np.all((pts >= 0) & (pts < 1000))
    val = ds.subset(ds.names[-2:])
    assert len(val) == 2 and val[0].name == ds.names[-2]


def test_folder_reads_the_suites_own_real_fixtures():
    """tests/fixtures/he (DSB-2018, CC0) is a folder data set like any other: a user's clone has it,
    and the tests that stand in for the shared data read it through the same reader."""
    ds = open_dataset(HE)
    assert sorted(ds.names) == sorted([HE_CELLS.stem, HE_EOSIN.stem, HE_GLANDS.stem]) and ds.class_names == ("nucleus",)
    s = ds[ds.names.index(HE_CELLS.stem)]
    assert s.image.shape == (1024, 640, 3) and s.instances.shape == (1024, 640)
    ids, pts = instance_points(s.instances)
    assert len(ids) == 362 and ids.max() == 362  # the crops' cut nuclei were joined: ids stay dense


# --- helpers writing small real files ----------------------------------------------------------


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, compression="zlib")


def _square_map(h: int = 20, w: int = 30) -> np.ndarray:
    inst = np.zeros((h, w), np.uint16)
    inst[2:6, 3:9] = 5
    inst[10:15, 20:26] = 9
    return inst


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)


# --- folder ------------------------------------------------------------------------------------


def test_folder_consep_patches_real():
    ds = open_dataset(_need("consep-patches/train"))
    assert ds.class_names == ("other", "inflammatory", "epithelial", "spindle-shaped") and ds.mpp == 0.25
    s = ds[ds.names.index("train_10_000")]
    assert s.image.shape == (256, 256, 3) and s.instances.shape == (256, 256)
    ids, _ = instance_points(s.instances)
    assert sorted(s.instance_classes) == ids.tolist()  # every instance classed, no stray keys
    assert set(s.instance_classes.values()) <= {0, 1, 2, 3}
    assert s.instance_classes[35] == 2  # the file says "35": 3 (epithelial), 1-based


def test_folder_cpm15_real_has_no_mpp():
    ds = open_dataset(_need("cpm15"))
    assert len(ds) == 15 and ds.mpp is None and ds.class_names == ("nucleus",)
    s = ds[0]
    assert s.image.shape[:2] == s.instances.shape


def test_folder_written_converts_modes_and_classes(tmp_path):
    rgb = _rgb()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    _write_png(tmp_path / "images" / "a.png", rgba)
    _write_png(tmp_path / "images" / "b.png", rgb[..., 0])  # grayscale
    _write_tif(tmp_path / "images" / "c.tif", rgb.astype(np.uint16) * 257)  # 16-bit
    for stem in "abc":
        _write_tif(tmp_path / "labels" / f"{stem}.tif", _square_map())
        (tmp_path / "classes").mkdir(exist_ok=True)
        (tmp_path / "classes" / f"{stem}.json").write_text('{"5": 1, "9": 3, "77": 2}')  # 77: not on the map
    (tmp_path / "classes.json").write_text('["tumour", "lymphocyte", "stroma"]')
    ds = open_dataset(tmp_path, mpp=0.5)
    assert type(ds).__name__ == "FolderDataset" and ds.names == ["a", "b", "c"]
    assert ds.class_names == ("tumour", "lymphocyte", "stroma") and ds.mpp == 0.5
    a, b, c = ds
    # partial alpha is laid on white, as when the same PNG is opened as a slide (models/pixels.py)
    np.testing.assert_array_equal(a.image, ((rgb.astype(np.uint32) * 7 + 255 * 248 + 127) // 255).astype(np.uint8))
    np.testing.assert_array_equal(b.image, np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(c.image, rgb)  # 16-bit scaled back to 8
    assert a.instances.dtype == np.int32 and a.instance_classes == {5: 0, 9: 2}


def test_folder_class_names_from_yaml_argument_and_default(tmp_path):
    _write_png(tmp_path / "images" / "a.png", _rgb())
    _write_tif(tmp_path / "labels" / "a.tif", _square_map())
    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "a.json").write_text('{"5": 2, "9": 2}')
    assert open_dataset(tmp_path).class_names == ("class 1", "class 2")
    (tmp_path / "dataset.yaml").write_text("class_names: [x, y, z]\nmpp: 0.3\n")
    ds = open_dataset(tmp_path)
    assert ds.class_names == ("x", "y", "z") and ds.mpp == 0.3
    assert open_dataset(tmp_path, class_names=["p", "q"]).class_names == ("p", "q")
    with pytest.raises(ValueError, match=r"a\.json: instance 5 has class 2, expected 1\.\.1"):
        open_dataset(tmp_path, class_names=["only"])[0]


def test_subset_and_slice(tmp_path):
    for stem in ("x1", "x2", "x3"):
        _write_png(tmp_path / "images" / f"{stem}.jpg", _rgb())
        _write_tif(tmp_path / "labels" / f"{stem}.tif", _square_map())
    ds = open_dataset(tmp_path)
    val = ds.subset(["x3", "x1"])
    assert val.names == ["x3", "x1"] and val[0].name == "x3" and ds.names == ["x1", "x2", "x3"]
    assert ds[1:].names == ["x2", "x3"] and [s.name for s in ds] == ds.names
    with pytest.raises(KeyError, match="nope"):
        ds.subset(["nope"])


# --- PanNuke -----------------------------------------------------------------------------------


def _pannuke_fold(root: Path, nested: bool) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((2, 16, 16, 3), np.float64)
    images[0] = 200.0
    images[1, ..., 1] = 17.0
    masks = np.zeros((2, 16, 16, 6), np.float64)
    masks[0, 1:4, 1:4, 0] = 3  # neoplastic id 3
    masks[0, 8:12, 8:12, 1] = 3  # inflammatory reuses id 3: must become a separate nucleus
    masks[0, 5:7, 5:7, 4] = 11  # epithelial id 11
    masks[..., 5] = (masks[..., :5].sum(-1) == 0).astype(np.float64)
    img_dir = root / "images" / "fold1" if nested else root
    mask_dir = root / "masks" / "fold1" if nested else root
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    np.save(img_dir / "images.npy", images)
    np.save(mask_dir / "masks.npy", masks)
    np.save(img_dir / "types.npy", np.array(["Breast", "Colon"]))
    return images, masks


@pytest.mark.parametrize("nested", [False, True])
def test_pannuke_written_fold(tmp_path, nested):
    _pannuke_fold(tmp_path, nested)
    ds = open_dataset(tmp_path)
    assert type(ds).__name__ == "PanNukeDataset" and ds.names == ["00000", "00001"]
    assert ds.class_names == ("neoplastic", "inflammatory", "connective", "dead", "epithelial") and ds.mpp == 0.25
    assert ds.tissues == {"00000": "Breast", "00001": "Colon"}
    s = ds[0]
    assert s.image.dtype == np.uint8 and (s.image == 200).all()
    ids, _ = instance_points(s.instances)
    assert len(ids) == 3  # the reused id 3 did not merge two nuclei
    assert s.instances[2, 2] == 3 and s.instance_classes[3] == 0
    assert s.instance_classes[int(s.instances[9, 9])] == 1 and s.instances[9, 9] != 3
    assert s.instance_classes[int(s.instances[5, 5])] == 4
    empty = ds[1]
    assert empty.instances.max() == 0 and empty.instance_classes == {} and (empty.image[..., 1] == 17).all()


def test_pannuke_mismatched_arrays(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "masks.npy", np.zeros((2, 8, 8, 6), np.uint8))
    with pytest.raises(ValueError, match=r"masks\.npy: masks \(2, 8, 8\) do not match images \(3, 8, 8\)"):
        open_dataset(tmp_path)


# --- MoNuSeg XML -------------------------------------------------------------------------------

_XML = """<Annotations MicronsPerPixel="0.5"><Annotation Id="1"><Regions>
<Region Id="1"><Vertices>{a}</Vertices></Region>
<Region Id="2"><Vertices>{b}</Vertices></Region>
</Regions></Annotation></Annotations>"""


def _vertices(x0: float, y0: float, x1: float, y1: float) -> str:
    return "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))


def test_monuseg_written_overlap_rule(tmp_path):
    from promptnucseg.models.data import MonusegDataset

    _write_tif(tmp_path / "s1.tif", _rgb())
    # Vertices are 1-based pixel centres: X 3..6 covers columns 2..5.
    (tmp_path / "s1.xml").write_text(_XML.format(a=_vertices(3, 3, 6, 6), b=_vertices(5, 5, 8, 8)))
    ds = open_dataset(tmp_path)
    assert type(ds).__name__ == "MonusegDataset" and ds.mpp == 0.5
    expected = np.zeros((20, 30), np.int32)
    expected[4:8, 4:8] = 2
    expected[2:6, 2:6] = 1  # region 1 comes first in the file and keeps the overlap
    np.testing.assert_array_equal(ds[0].instances, expected)
    expected[4:8, 4:8] = 2  # with first_wins=False the later region is painted on top
    np.testing.assert_array_equal(MonusegDataset(tmp_path, first_wins=False)[0].instances, expected)


def test_monuseg_xml_matches_kumar_labels():
    """Measured on TCGA-50-5931 (10k pixels where polygons overlap): 444/444 nuclei, foreground
    IoU 0.995, PQ 0.993 against the Kumar map (PQ 0.940 if later regions won the overlaps)."""
    from promptnucseg.models.evaluation import pq

    ds = open_dataset(_need("raw-formats/monuseg-xml"))
    assert ds.mpp == pytest.approx(0.2468)
    kumar = open_dataset(_need("kumar/train"))
    stem = "TCGA-50-5931-01Z-00-DX1"
    mine, ref = ds[ds.names.index(stem)], kumar[kumar.names.index(stem)]
    np.testing.assert_array_equal(mine.image, ref.image)
    n_mine, n_ref = len(instance_points(mine.instances)[0]), len(instance_points(ref.instances)[0])
    fg_mine, fg_ref = mine.instances > 0, ref.instances > 0
    iou = (fg_mine & fg_ref).sum() / (fg_mine | fg_ref).sum()
    quality = pq(ref.instances, mine.instances)
    print(f"{stem}: {n_mine} vs {n_ref} nuclei, foreground IoU {iou:.4f}, PQ {quality.pq:.4f}")
    assert abs(n_mine - n_ref) <= 0.02 * n_ref
    assert iou > 0.98
    assert quality.pq > 0.97


# --- CPM-17 / CoNSeP .mat ---------------------------------------------------------------------


def test_cpm17_written_mat(tmp_path):
    import scipy.io

    inst = _square_map().astype(np.float64)  # MATLAB saves doubles
    _write_png(tmp_path / "Images" / "image_00.png", _rgb())
    (tmp_path / "Labels").mkdir()
    scipy.io.savemat(tmp_path / "Labels" / "image_00.mat", {"inst_map": inst})
    ds = open_dataset(tmp_path)
    assert type(ds).__name__ == "MatDataset" and ds.class_names == ("nucleus",) and ds.mpp is None
    s = ds[0]
    assert s.instance_classes is None and s.instances.dtype == np.int32
    np.testing.assert_array_equal(s.instances, inst.astype(np.int32))


def test_consep_written_original_types_are_merged(tmp_path):
    import scipy.io

    inst = np.zeros((20, 30), np.int32)
    for k in range(1, 8):  # ids 1..7, one per CoNSeP original type 1..7
        inst[2:5, 4 * k - 3 : 4 * k - 1] = k
    _write_png(tmp_path / "Images" / "test_1.png", np.dstack([_rgb(), np.full((20, 30), 255, np.uint8)]))  # CoNSeP PNGs are RGBA
    (tmp_path / "Labels").mkdir()
    scipy.io.savemat(tmp_path / "Labels" / "test_1.mat", {"inst_map": inst, "inst_type": np.arange(1, 8)[:, None].astype(float)})
    (tmp_path / "Overlay").mkdir()  # CoNSeP ships overlays with the same stems: must not be read as images
    _write_png(tmp_path / "Overlay" / "test_1.png", _rgb())
    ds = open_dataset(tmp_path)
    assert ds.class_names == ("other", "inflammatory", "epithelial", "spindle-shaped")
    # HoVer-Net's merge: 1->other, 2->inflammatory, 3,4->epithelial, 5,6,7->spindle-shaped (0-based here)
    assert ds[0].instance_classes == {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3}
    seven = ["other", "inflammatory", "healthy epithelial", "malignant epithelial", "fibroblast", "muscle", "endothelial"]
    assert open_dataset(tmp_path, class_names=seven)[0].instance_classes == {k: k - 1 for k in range(1, 8)}
    scipy.io.savemat(tmp_path / "Labels" / "test_1.mat", {"inst_map": inst, "type_map": (inst > 0) * 2})
    assert open_dataset(tmp_path, format="consep")[0].instance_classes == {k: 1 for k in range(1, 8)}


def test_consep_real_mat_with_npy_maps(tmp_path):
    """The raw .mat files hold inst_type/inst_centroid only; their maps are the .npy beside them.

    Row k of inst_type/inst_centroid belongs to the k-th smallest id: the centroids prove it.
    """
    raw, patches = _need("raw-formats/consep-mat"), _need("consep-patches/train")
    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    for mat in sorted(raw.glob("*.mat")):
        (tmp_path / "Images" / f"{mat.stem}.jpg").symlink_to(patches / "images" / f"{mat.stem}.jpg")
        for f in (mat, mat.with_suffix(".npy")):
            (tmp_path / "Labels" / f.name).symlink_to(f)
    ds = open_dataset(tmp_path)
    assert type(ds).__name__ == "MatDataset" and ds.class_names[2] == "epithelial"
    folder = open_dataset(patches)
    import scipy.io

    for s in ds:
        ref = folder[folder.names.index(s.name)]
        np.testing.assert_array_equal(s.instances, ref.instances)
        assert s.instance_classes == ref.instance_classes
        _, centroids = instance_points(s.instances)
        np.testing.assert_allclose(centroids, scipy.io.loadmat(raw / f"{s.name}.mat")["inst_centroid"], atol=1e-3)


# --- CPM ASCII ---------------------------------------------------------------------------------


def test_cpm_ascii_real_equals_cpm15_label():
    ds = open_dataset(_need("raw-formats/cpm-ascii"))
    assert type(ds).__name__ == "CpmAsciiDataset" and ds.names == ["image01"]
    cpm15 = open_dataset(_need("cpm15"))
    s, ref = ds[0], cpm15[cpm15.names.index("image01")]
    assert s.instances.shape == (488, 643)  # header "643 488" is width, height
    np.testing.assert_array_equal(s.instances, ref.instances)
    np.testing.assert_array_equal(s.image, ref.image)


def test_cpm_ascii_written_and_bad_header(tmp_path):
    _write_png(tmp_path / "m.png", _rgb(2, 3))
    (tmp_path / "m_mask.txt").write_text("3 2\n0\n4\n4\n0\n0\n7\n")
    np.testing.assert_array_equal(open_dataset(tmp_path)[0].instances, [[0, 4, 4], [0, 0, 7]])
    (tmp_path / "m_mask.txt").write_text("3 3\n0\n4\n4\n0\n0\n7\n")
    with pytest.raises(ValueError, match=r"m_mask\.txt: header says 3x3 = 9 labels but 6 follow"):
        open_dataset(tmp_path)[0]


# --- errors ------------------------------------------------------------------------------------


def test_error_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere: no such folder"):
        open_dataset(tmp_path / "nothere")
    with pytest.raises(FileNotFoundError, match=r"nothere: no such folder"):
        open_dataset(tmp_path / "nothere", format="folder")


def test_error_no_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match=r"images: holds no images"):
        open_dataset(tmp_path)


def test_error_image_without_label(tmp_path):
    _write_png(tmp_path / "images" / "a.png", _rgb())
    _write_png(tmp_path / "images" / "b.png", _rgb())
    _write_tif(tmp_path / "labels" / "a.tif", _square_map())
    with pytest.raises(FileNotFoundError, match=r"labels/b\.tif: missing label for image .*b\.png"):
        open_dataset(tmp_path)
    mon = tmp_path / "monuseg"
    _write_tif(mon / "c.tif", _rgb())
    _write_tif(mon / "d.tif", _rgb())
    (mon / "c.xml").write_text(_XML.format(a=_vertices(3, 3, 6, 6), b=_vertices(5, 5, 8, 8)))
    with pytest.raises(FileNotFoundError, match=r"monuseg/d\.xml: missing label for image .*d\.tif"):
        open_dataset(mon)


def test_error_label_shape_differs(tmp_path):
    _write_png(tmp_path / "images" / "a.png", _rgb(20, 30))
    _write_tif(tmp_path / "labels" / "a.tif", _square_map(30, 20))
    ds = open_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"a\.tif: label map is 20x30 \(WxH\) but its image a\.png is 30x20"):
        ds[0]


def test_error_unknown_and_undetectable_format(tmp_path):
    _write_png(tmp_path / "a.png", _rgb())
    with pytest.raises(ValueError, match=r"unknown dataset format 'coco'"):
        open_dataset(tmp_path, format="coco")
    with pytest.raises(ValueError, match=r"cannot tell the dataset format"):
        open_dataset(tmp_path)


def test_error_bad_class_json(tmp_path):
    _write_png(tmp_path / "images" / "a.png", _rgb())
    _write_tif(tmp_path / "labels" / "a.tif", _square_map())
    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "a.json").write_text('{"5": 0}')
    with pytest.raises(ValueError, match=r"a\.json: instance 5 has class 0, expected 1\.\."):
        open_dataset(tmp_path)


def test_error_consep_type_zero_and_bad_yaml_mpp(tmp_path):
    import scipy.io

    _write_png(tmp_path / "Images" / "t.png", _rgb())
    (tmp_path / "Labels").mkdir()
    scipy.io.savemat(tmp_path / "Labels" / "t.mat", {"inst_map": _square_map().astype(np.int32), "inst_type": np.array([[2], [0]])})
    with pytest.raises(ValueError, match=r"t\.mat: instance type 0 outside 1\.\.4"):
        open_dataset(tmp_path)[0]
    folder = tmp_path / "f"
    _write_png(folder / "images" / "a.png", _rgb())
    _write_tif(folder / "labels" / "a.tif", _square_map())
    (folder / "dataset.yaml").write_text("mpp: fast\n")
    with pytest.raises(ValueError, match=r"dataset\.yaml: mpp is 'fast', not a positive number"):
        open_dataset(folder)


def test_error_two_images_with_one_stem_and_hidden_files_skipped(tmp_path):
    _write_png(tmp_path / "images" / "a.png", _rgb())
    _write_tif(tmp_path / "labels" / "a.tif", _square_map())
    (tmp_path / "images" / "._a.png").write_bytes(b"\x00\x05macOS resource fork")  # not an image: must be skipped
    assert open_dataset(tmp_path).names == ["a"]
    _write_tif(tmp_path / "images" / "a.tif", _rgb())
    with pytest.raises(ValueError, match=r"images: two images for 'a' \(a\.png, a\.tif\)\. Fix: keep one"):
        open_dataset(tmp_path)


def test_error_bad_label_in_any_format_names_its_file(tmp_path):
    from promptnucseg.models.data import LabelMapError

    _write_png(tmp_path / "m.png", _rgb(2, 3))
    (tmp_path / "m_mask.txt").write_text("3 2\n0\n4\n4\n0\n-1\n7\n")
    with pytest.raises(LabelMapError, match=r"m_mask\.txt: holds negative labels \(min -1\)\. Fix: use 0 for background"):
        open_dataset(tmp_path)[0]
    mat = tmp_path / "mat"
    _write_png(mat / "Images" / "t.png", _rgb(2, 3))
    (mat / "Labels").mkdir()
    np.save(mat / "Labels" / "t.npy", np.array([[0, 1.5, 0], [0, 0, 0]]))  # CoNSeP-style map beside the .mat
    import scipy.io

    scipy.io.savemat(mat / "Labels" / "t.mat", {"note": np.array([1])})
    with pytest.raises(LabelMapError, match=r"t\.npy: holds non-integer values"):
        open_dataset(mat, format="cpm17")[0]


def test_cpm15_images_come_to_the_model_resolution_from_their_own():
    """CPM-15 mixes 20x and 40x: with data.mpp 0.25 its 20x images are doubled, its 40x ones kept,
    and their nuclei then have Kumar-like sizes."""
    from promptnucseg.models.config import DataConfig
    from promptnucseg.models.training.data import load_split

    root = SHARED_DATA / "cpm15"
    need(root)
    table = Path(__file__).resolve().parents[1] / "configs" / "datasets" / "cpm15_mpp.yaml"
    as_stored, _ = load_split(DataConfig(train=[str(root)]))
    resampled, _ = load_split(DataConfig(train=[str(root)], mpp=0.25, image_mpp=[str(table)]))
    by_name = {s.name: s for s in as_stored}
    for s in resampled:
        factor = 2 if s.name <= "image07" else 1
        assert s.instances.shape == tuple(factor * d for d in by_name[s.name].instances.shape)
        assert s.image.shape[:2] == s.instances.shape
    areas = [np.median(np.unique(s.instances[s.instances > 0], return_counts=True)[1]) for s in resampled]
    assert 150 < np.median(areas) < 800  # Kumar's per-image medians at 0.25 um/px: 93-831 px²
    with pytest.raises(ValueError, match="no known microns per pixel.*image_mpp"):
        load_split(DataConfig(train=[str(root)], mpp=0.25))
