"""Two prompts on one nucleus are found from their masks without negatives; neighbours are not."""
import numpy as np

from promptnucseg.models.duplicate_prompts import close_prompts, duplicate_prompts


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
