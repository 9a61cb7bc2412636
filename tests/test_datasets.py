"""Dataset readers on the real shared data (skipped when absent) and on small files written here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptnucseg.models.data import NucleusDataset, instance_points, open_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(sub: str) -> Path:
    path = DATA / sub
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (real-data check needs ../shared/data beside the repo)")
    return path


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


@pytest.mark.shared_data
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


@pytest.mark.shared_data
def test_folder_consep_patches_real():
    ds = open_dataset(_need("consep-patches/train"))
    assert ds.class_names == ("other", "inflammatory", "epithelial", "spindle-shaped") and ds.mpp == 0.25
    s = ds[ds.names.index("train_10_000")]
    assert s.image.shape == (256, 256, 3) and s.instances.shape == (256, 256)
    ids, _ = instance_points(s.instances)
    assert sorted(s.instance_classes) == ids.tolist()  # every instance classed, no stray keys
    assert set(s.instance_classes.values()) <= {0, 1, 2, 3}
    assert s.instance_classes[35] == 2  # the file says "35": 3 (epithelial), 1-based


@pytest.mark.shared_data
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
    np.testing.assert_array_equal(a.image, rgb)  # alpha dropped
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
