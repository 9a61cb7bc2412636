"""The tile grid covers the region, keeps alignment, and its cores partition the plane."""
import numpy as np
import pytest

from promptnucseg.models.interface import span_starts
from promptnucseg.wsi_pipeline.tiling import TileGrid


@pytest.mark.parametrize("w,h,tile,overlap", [(1000, 700, 256, 64), (4096, 300, 1024, 128), (100, 100, 1024, 128), (2049, 2049, 512, 100)])
def test_tiles_cover_region_and_stay_aligned(w, h, tile, overlap):
    grid = TileGrid(w, h, tile, overlap)
    tiles = list(grid)
    assert len(tiles) == len(grid) and [t.index for t in tiles] == list(range(len(tiles)))
    covered = np.zeros((h, w), bool)
    for t in tiles:
        assert t.x % 32 == 0 and t.y % 32 == 0
        assert 0 < t.w <= tile and 0 < t.h <= tile and t.x + t.w <= w and t.y + t.h <= h
        covered[t.y : t.y + t.h, t.x : t.x + t.w] = True
    assert covered.all()


@pytest.mark.parametrize("w,h,tile,overlap", [(1000, 700, 256, 64), (2049, 1500, 512, 100)])
def test_each_point_has_exactly_one_owner_far_from_inner_edges(w, h, tile, overlap):
    grid = TileGrid(w, h, tile, overlap)
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, w, 20000), rng.uniform(0, h, 20000)
    owners = np.zeros(len(xs), int)
    for t in grid:
        own = t.owns(xs, ys)
        owners += own
        # an owned point is at least overlap/2 from any edge of its tile that is not the region's edge
        ox, oy = xs[own], ys[own]
        if t.x > 0:
            assert (ox - t.x >= overlap / 2).all()
        if t.x + t.w < w:
            assert (t.x + t.w - ox >= overlap / 2).all()
        if t.y > 0:
            assert (oy - t.y >= overlap / 2).all()
        if t.y + t.h < h:
            assert (t.y + t.h - oy >= overlap / 2).all()
    assert (owners == 1).all()


def test_points_on_a_boundary_go_to_one_side_only():
    grid = TileGrid(600, 256, 256, 64)
    tiles = list(grid)
    boundary = tiles[0].core[2]
    hits = [t.index for t in tiles if t.owns(np.array([boundary]), np.array([10.0]))[0]]
    assert hits == [1]


@pytest.mark.parametrize("kwargs,match", [({"tile_size": 250}, "multiple"), ({"overlap": 1024}, "smaller"), ({"overlap": -1}, ">= 0")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TileGrid(1000, 1000, **{"tile_size": 1024, "overlap": 128, **kwargs})


def _cores_see_one_pass_windows(grid: TileGrid, window: int = 256, step: int = 192) -> bool:
    one_pass = span_starts(grid.width, window, step)
    for t in grid:
        end = t.x + t.w
        own = {t.x + s for s in span_starts(t.w, window, step) if t.x + s + window <= end or end == grid.width}
        if not {s for s in one_pass if s < t.core[2] and s + window > t.core[0]} <= own:
            return False
    return True


def test_tiles_follow_the_model_window_grid():
    """With the model's (window, step), tiles start on multiples of the step, and `seamless`
    says when each tile holds whole windows of one region-wide grid with cores clear of
    windows it cannot see."""
    grid = TileGrid(5000, 3000, 1024, 128, 32, window_grid=(256, 192))
    assert grid.stride == 768 and all(x % 192 == 0 for x in grid.xs) and grid.seamless
    # what `seamless` promises, checked from the windows themselves: every window of one pass over
    # the region that reaches into a tile's core is one of that tile's own windows (the
    # interface's span rule), wholly inside the tile unless it reaches past the region's end
    assert _cores_see_one_pass_windows(grid)
    assert _cores_see_one_pass_windows(TileGrid(5000, 3000, 1408, 256, 32, window_grid=(256, 192)))
    assert not _cores_see_one_pass_windows(TileGrid(5000, 3000, 992, 128, 32, window_grid=(256, 192)))
    assert not _cores_see_one_pass_windows(TileGrid(5000, 3000, 256, 64, 32, window_grid=(256, 192)))
    assert not TileGrid(5000, 3000, 1024, 128).seamless  # no model grid given: plain 32-px alignment
    assert TileGrid(5000, 3000, 1024, 128).stride == 896
    assert not TileGrid(5000, 3000, 1000 // 32 * 32, 128, 32, window_grid=(256, 192)).seamless  # 992 - 256 is not whole steps
    assert not TileGrid(5000, 3000, 256, 64, 32, window_grid=(256, 192)).seamless  # overlap 64 < the windows' own 128
    assert TileGrid(5000, 3000, 1408, 256, 32, window_grid=(256, 192)).seamless


def test_a_model_whose_windows_follow_each_tile_is_never_seamless():
    """The release's settings (last window flush with the tile's end, or the prompter on whole tiles)
    tie a nucleus' windows to where its tile ends: the same grid that is seamless for our model is not."""
    ours = TileGrid(5000, 3000, 1024, 128, 32, window_grid=(256, 192))
    release = TileGrid(5000, 3000, 1024, 128, 32, window_grid=(256, 192), seamless_windows=False)
    assert ours.seamless and not release.seamless
    assert (release.xs, release.ys, release.stride) == (ours.xs, ours.ys, ours.stride)  # the same tiles either way
