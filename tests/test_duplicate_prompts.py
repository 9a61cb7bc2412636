"""Two prompts on one nucleus are found from their masks without negatives; neighbours are not."""
import numpy as np

from promptnucseg.models.duplicate_prompts import close_prompts, duplicate_prompts
from conftest import SHARED_DATA, need


def _disc(cx: float, cy: float, r: float, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_two_prompts_on_one_big_nucleus_are_one_and_the_better_stays():
    big = _disc(30, 30, 18)
    points = np.array([[22.0, 30.0], [38.0, 30.0]], np.float32)
    masks = np.stack([big, big | _disc(30, 30, 17.5)])
    assert duplicate_prompts(points, np.array([0.6, 0.9]), masks, 30, 0.7) == {0: 1}
    assert duplicate_prompts(points, np.array([0.9, 0.6]), masks, 30, 0.7) == {1: 0}


def test_neighbours_with_leaking_masks_stay_apart():
    a, b = _disc(20, 30, 9), _disc(40, 30, 9)
    points = np.array([[20.0, 30.0], [40.0, 30.0]], np.float32)
    leaky = np.stack([a | _disc(40, 30, 4), b | _disc(20, 30, 4)])  # each mask reaches the other point
    assert duplicate_prompts(points, np.array([0.5, 0.9]), leaky, 30, 0.7) == {}
    far = np.array([[20.0, 30.0], [60.0, 30.0]], np.float32)
    assert duplicate_prompts(far, np.array([0.5, 0.9]), np.stack([_disc(30, 30, 30)] * 2), 30, 0.7) == {}  # beyond max_distance


def test_a_chain_of_three_keeps_one_and_close_prompts_are_the_candidates():
    big = _disc(32, 32, 22)
    points = np.array([[20.0, 32.0], [32.0, 32.0], [44.0, 32.0]], np.float32)
    dup = duplicate_prompts(points, np.array([0.3, 0.8, 0.5]), np.stack([big] * 3), 15, 0.7)
    assert dup == {0: 1, 2: 1}
    assert close_prompts(np.array([[0, 0], [5, 0], [100, 100]], np.float32), 10).tolist() == [0, 1]
    assert close_prompts(np.zeros((1, 2), np.float32), 10).tolist() == []


def test_two_prompts_on_a_real_large_nucleus_give_one_whole_nucleus():
    """A 1,560 px² nucleus of a held-out Kumar image with a prompt at each end of its long axis."""

    import torch

    from promptnucseg.models.data.datasets import open_dataset
    from promptnucseg.models.interface import load_predictor
    from promptnucseg.models.prompter.postprocess import Prompts

    kumar = SHARED_DATA / "kumar" / "train"
    need(kumar)
    ds = open_dataset(kumar)
    sample = ds[list(ds.names).index("TCGA-A7-A13E-01Z-00-DX1")]
    y0, x0 = 657, 149
    tile = np.ascontiguousarray(sample.image[y0 : y0 + 256, x0 : x0 + 256])
    truth = sample.instances[y0 : y0 + 256, x0 : x0 + 256] == 5
    points = np.array([[135.2, 121.1], [121.5, 135.0]], np.float32)
    assert all(truth[int(round(y)), int(round(x))] for x, y in points)
    predictor = load_predictor(device="cpu")
    predictor.config.inference.duplicate_iou = 0.5
    with torch.inference_mode():
        nuclei = predictor._segment(tile, Prompts(points, np.zeros(2, np.int16), np.array([0.9, 0.8], np.float32)))
    assert len(nuclei) == 1
    inst, _ = nuclei.label_maps(tile.shape[:2])
    assert all(inst[int(round(y)), int(round(x))] == 1 for x, y in points)
    assert (truth & (inst == 1)).sum() / (truth | (inst == 1)).sum() > 0.75  # 0.85 measured; 0.59 without the check


def test_only_prompts_whose_cut_masks_touch_are_decoded_again():
    from promptnucseg.models.duplicate_prompts import touching_pairs

    left, right = _disc(22, 30, 8), _disc(38, 30, 8)  # two halves that meet at x = 30
    apart = _disc(10, 10, 3)
    points = np.array([[22.0, 30.0], [38.0, 30.0], [14.0, 10.0]], np.float32)
    got = touching_pairs({0: left, 1: right, 2: apart}, points, (0, 0), 24)
    assert got == [0, 1]
    assert touching_pairs({0: _disc(10, 30, 4), 1: _disc(40, 30, 4)}, points[:2] + [[-12, 0], [2, 0]], (0, 0), 40) == []
