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
