"""Slide readers on real slides and on real files written here: geometry, mpp, pixels, bad input."""
from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from promptnucseg.wsi_pipeline.errors import PipelineInputError
from promptnucseg.models.interface import to_rgb_uint8
from promptnucseg.wsi_pipeline.slides import coarse_warning, open_slide, resolve_mpp
from conftest import SHARED_DATA, sample_slide_or_skip

SLIDES = SHARED_DATA / "slides"
CMU = SLIDES / "cmu_small_region.svs"  # the sample slide: read through sample_slide_or_skip (shared data or user cache)
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
KIDNEY = SLIDES / "kidney-48-5.tif"

needs_slides = pytest.mark.skipif(not SLIDES.is_dir(), reason="needs the real slides of the shared data (../shared/data)")


def real(path: Path) -> Path:
    """The sample slide from wherever this machine has it; the other slides from the shared data."""
    return sample_slide_or_skip() if path == CMU else path


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Tissue-like smooth random RGB, so resampling comparisons are meaningful."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((height, width, 3)), (4, 4, 0))
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


def halve(a: np.ndarray) -> np.ndarray:
    """2x2 block mean: a level-1 pixel covers exactly two level-0 pixels each way."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A tiled, zlib, 3-level pyramidal TIFF at 0.25 um/px (resolution tags in cm)."""
    levels = [smooth_rgb(1024, 1536)]
    for _ in range(2):
        levels.append(halve(levels[-1]))
    path = tmp_path_factory.mktemp("pyr") / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            tw.write(level, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1,
                     resolution=(4e4 / 2**i, 4e4 / 2**i), resolutionunit="CENTIMETER")
    return path, levels


# ----- real slides -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, backend, dims, levels, mpp",
    [
        (CMU, "openslide", (2220, 2967), [(2220, 2967)], 0.499),
        pytest.param(TCGA, "openslide", (4443, 3567), [(4443, 3567), (2221, 1783)], None, marks=needs_slides),
        pytest.param(KIDNEY, "tifffile", (1493, 901), [(1493, 901)], None, marks=needs_slides),
    ],
)
def test_real_slide_geometry_and_mpp(path, backend, dims, levels, mpp):
    with open_slide(real(path)) as reader:
        assert reader.backend == backend
        assert reader.dimensions == dims
        assert reader.level_count == len(levels)
        assert list(reader.level_dimensions) == levels
        assert reader.level_downsamples[0] == 1.0
        assert reader.mpp == mpp
        info = json.loads(json.dumps(reader.describe()))
        assert info["dimensions"] == list(dims) and info["backend"] == backend
        region = reader.read_region((dims[0] // 2, dims[1] // 2), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
    if path == CMU:
        assert reader.mpp_source == "metadata: openslide.mpp-x"
        assert reader.objective_power == 20 and reader.vendor == "aperio"
    if path == TCGA:
        assert reader.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)


def test_svs_same_pixels_through_openslide_and_tifffile():
    cmu = sample_slide_or_skip()
    for path, level in ((cmu, 0), *([(TCGA, 0)] if TCGA.is_file() else [])):  # TCGA: where the shared data is
        with open_slide(path, backend="openslide") as a, open_slide(path, backend="tifffile") as b:
            assert a.dimensions == b.dimensions and a.level_count == b.level_count
            ra = a.read_region((1000, 700), level, (300, 200))
            rb = b.read_region((1000, 700), level, (300, 200))
            assert np.array_equal(ra, rb), path.name
    with open_slide(cmu, backend="tifffile") as b:  # aperio metadata parsed by us, not by OpenSlide
        assert b.mpp == pytest.approx(0.499) and b.mpp_source == "metadata: aperio MPP" and b.objective_power == 20


@needs_slides
def test_flat_tiff_equals_png_of_same_pixels(tmp_path):
    pixels = tifffile.imread(KIDNEY)
    png = tmp_path / "kidney.png"
    Image.fromarray(pixels).save(png, compress_level=1)
    with open_slide(KIDNEY) as tif, open_slide(png) as img:
        assert (tif.backend, img.backend) == ("tifffile", "pillow")
        assert tif.dimensions == img.dimensions == (1493, 901)
        for loc, size in (((300, 480), (150, 100)), ((1400, 850), (200, 120)), ((-20, -10), (50, 40))):
            a, b = tif.read_region(loc, 0, size), img.read_region(loc, 0, size)
            assert np.array_equal(a, b)
        # partly outside: the outside part is white, the inside part is the file's pixels
        edge = tif.read_region((1400, 850), 0, (200, 120))
        assert (edge[51:, :] == 255).all() and (edge[:, 93:] == 255).all()
        assert np.array_equal(edge[:51, :93], pixels[850:, 1400:])
    # the same pixels as compressed strips go through zarr instead of a memory map
    strips = tmp_path / "kidney-lzw.tif"
    tifffile.imwrite(strips, pixels, photometric="rgb", compression="lzw", rowsperstrip=64)
    with open_slide(strips) as lzw:
        assert np.array_equal(lzw.read_region((300, 100), 0, (400, 500)), pixels[100:600, 300:700])


@needs_slides
def test_transparent_outside_scan_area_becomes_white():
    import openslide

    raw = openslide.OpenSlide(str(TCGA))
    try:
        alpha = np.asarray(raw.read_region((4400, 3500), 0, (100, 100)))[..., 3]
    finally:
        raw.close()
    assert (alpha == 0).any(), "region chosen to reach past the slide's edge"
    with open_slide(TCGA) as reader:
        rgb = reader.read_region((4400, 3500), 0, (100, 100))
        assert rgb.shape == (100, 100, 3)
        assert (rgb[alpha == 0] == 255).all()


@needs_slides
def test_missing_mpp_is_refused_and_override_is_recorded():
    with open_slide(TCGA) as reader:
        assert reader.mpp is None
        with pytest.raises(PipelineInputError) as err:
            resolve_mpp(reader)
        message = str(err.value)
        assert TCGA.name in message and "--mpp 0.25" in message and "\n" not in message
        with pytest.raises(PipelineInputError, match="--mpp"):
            reader.read_at_mpp(0, 0, 512, 512, 0.5)
        assert resolve_mpp(reader, 0.25) == (0.25, "override")
        info = reader.describe()
        assert (info["mpp"], info["mpp_source"], info["metadata_mpp"]) == (0.25, "override", None)
    with open_slide(CMU, mpp_override=0.3) as reader:  # override wins over the file's 0.499
        assert resolve_mpp(reader) == (0.3, "override")
        assert (reader.mpp_source, reader.metadata_mpp) == ("override", 0.499)
    with open_slide(KIDNEY) as reader:
        with pytest.raises(PipelineInputError, match="kidney-48-5.tif.*no microns per pixel"):
            resolve_mpp(reader)
        for bad in (-1, 0, "abc", float("nan")):
            with pytest.raises(PipelineInputError, match="positive number"):
                resolve_mpp(reader, bad)


@needs_slides
def test_a_slide_too_coarse_for_nuclei_says_so_and_is_refused_past_the_limit(tmp_path):
    # the TCGA file is a whole section in 4,443 px: ~4 um/px is its true scale
    with open_slide(TCGA) as reader:
        with pytest.raises(PipelineInputError) as err:
            resolve_mpp(reader, 4.0)
        message = str(err.value)
        for words in (TCGA.name, "finest level is 4 um/px (given by --mpp)", "0.5 um/px or finer", "refused above 2 um/px",
                      "full-resolution scan", "--force-mpp"):
            assert words in message, (words, message)
        assert "\n" not in message
        assert resolve_mpp(reader, 4.0, force=True) == (4.0, "override")
        assert resolve_mpp(reader, 2.0) == (2.0, "override")  # at the limit: warned, not refused
    # the same rule for a file's own metadata: the kidney pixels saved as a TIFF that says 5 um/px
    coarse = tmp_path / "kidney-5um.tif"
    tifffile.imwrite(coarse, tifffile.imread(KIDNEY), photometric="rgb", resolution=(2000, 2000), resolutionunit="CENTIMETER")
    with open_slide(coarse) as reader:
        assert reader.mpp == pytest.approx(5.0)
        with pytest.raises(PipelineInputError, match=r"kidney-5um.tif: its finest level is 5 um/px \(tiff resolution tags"):
            resolve_mpp(reader)


def test_coarse_warning_names_the_upsampling():
    assert coarse_warning(0.25, "metadata", 0.25) is None and coarse_warning(0.504, "metadata", 0.25) is None
    ten_x = coarse_warning(1.0, "metadata: openslide.mpp-x", 0.25)
    assert "finest level is 1 um/px (metadata: openslide.mpp-x)" in ten_x and "upsampled x4" in ten_x and "0.5 um/px" in ten_x
    forced = coarse_warning(20.0, "override", 0.25)
    assert "upsampled x80" in forced and "--force-mpp" in forced and "few or no real nuclei" in forced


def test_read_at_mpp_sizes_on_the_sample_slide():
    with open_slide(sample_slide_or_skip()) as reader:
        rgb, scale = reader.read_at_mpp(100, 200, 300, 500, 0.998)
        assert scale == pytest.approx(2.0) and rgb.shape == (250, 150, 3)
        native, scale = reader.read_at_mpp(100, 200, 300, 500, 0.499)
        assert scale == 1.0 and np.array_equal(native, reader.read_region((100, 200), 0, (300, 500)))


@needs_slides
def test_read_at_mpp_level_choice_on_a_two_level_pyramid():
    with open_slide(TCGA, mpp_override=0.25) as reader:
        assert reader.best_level_for_downsample(2.0) == 1  # 2.0005 is within tolerance
        assert reader.best_level_for_downsample(1.9) == 0
        assert reader.best_level_for_downsample(64.0) == 1
        rgb, scale = reader.read_at_mpp(1001, 1203, 800, 600, 0.5)
        assert rgb.shape == (300, 400, 3) and scale == 2.0
        small, scale = reader.read_at_mpp(0, 0, 4443, 3567, 8.0)
        assert small.shape == (111, 139, 3) and scale == 32.0


def test_upsampling_and_downsampling_map_pixels_exactly(tmp_path):
    """A dark square's centre must land at (centre - x0) / scale: no half-pixel drift."""
    img = np.full((200, 300, 3), 255, np.uint8)
    img[60:76, 100:116] = (120, 30, 90)  # 16x16 square centred at level-0 (108, 68)
    path = tmp_path / "square.png"
    Image.fromarray(img).save(path)
    with open_slide(path, mpp_override=0.5) as reader:
        for target, (x0, y0) in ((0.25, (50, 20)), (1.0, (51, 21)), (0.5 * 3.3, (7, 3))):
            rgb, scale = reader.read_at_mpp(x0, y0, 160, 120, target)
            assert scale == pytest.approx(target / 0.5)
            assert rgb.shape == (round(120 / scale), round(160 / scale), 3)
            darkness = 255.0 - rgb.astype(float).mean(axis=2)
            cy, cx = ndimage.center_of_mass(darkness)
            # output pixel centres sit at x0 + (i + 0.5) * scale in level-0 px
            assert x0 + (cx + 0.5) * scale == pytest.approx(108.0, abs=0.05)
            assert y0 + (cy + 0.5) * scale == pytest.approx(68.0, abs=0.05)
        up, scale = reader.read_at_mpp(100, 60, 16, 16, 0.25)  # 0.5 um/px read at 0.25: 2x larger
        assert scale == 0.5 and up.shape == (32, 32, 3)


def test_pyramid_tiff_openslide_and_tifffile_agree(pyramid):
    path, levels = pyramid
    with open_slide(path) as auto, open_slide(path, backend="tifffile") as tif:
        assert auto.backend == "openslide" and auto.vendor == "generic-tiff"
        for reader in (auto, tif):
            assert reader.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
            assert reader.level_downsamples == (1.0, 2.0, 4.0)
            assert reader.mpp == pytest.approx(0.25)
        assert tif.mpp_source == "tiff resolution tags (XResolution, unit centimeter)"
        for level, pixels in enumerate(levels):
            ds = 2**level
            a = auto.read_region((200 * ds, 100 * ds), level, (150, 90))
            b = tif.read_region((200 * ds, 100 * ds), level, (150, 90))
            assert np.array_equal(a, b) and np.array_equal(a, pixels[100:190, 200:350])
        # a level read at its own resolution needs no resampling: the stored pixels come back
        rgb, scale = tif.read_at_mpp(400, 200, 800, 400, 1.0)
        assert scale == 4.0 and np.array_equal(rgb, levels[2][50:150, 100:300])
        # the level-1 path and the level-0 path see the same picture
        via_level1 = tif.read_scaled(101.0, 203.0, 400, 300, 2.0)
        tif.level_downsamples = (1.0, 99.0, 999.0)  # hide the pyramid
        via_level0 = tif.read_scaled(101.0, 203.0, 400, 300, 2.0)
        assert np.abs(via_level1.astype(int) - via_level0).mean() < 1.5


def test_banded_whole_slide_read_is_seamless(pyramid):
    path, _ = pyramid
    with open_slide(path, backend="tifffile") as reader:
        whole = reader.read_scaled(0.0, 0.0, 466, 311, 3.3)
        banded = reader.read_downsampled(3.3, max_window_pixels=20_000)
        assert banded.shape == whole.shape == (311, 466, 3)
        diff = np.abs(banded.astype(int) - whole)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding in the filter weights only
        thumb = reader.thumbnail(200)
        assert max(thumb.shape[:2]) == 200 and thumb.dtype == np.uint8


def test_ome_tiff_physical_size_and_subifd_levels(tmp_path):
    img = smooth_rgb(512, 768, seed=1)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subifds=2, tile=(128, 128), photometric="rgb", compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm",
                           "PhysicalSizeY": 500.0, "PhysicalSizeYUnit": "nm"})
        for ds in (2, 4):
            tw.write(img[::ds, ::ds], tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1)
    with open_slide(path) as reader:
        assert (reader.backend, reader.vendor) == ("tifffile", "ome-tiff")
        assert reader.mpp == pytest.approx(0.5) and reader.mpp_source == "ome: PhysicalSizeX"
        assert reader.level_dimensions == ((768, 512), (384, 256), (192, 128))
        assert np.array_equal(reader.read_region((200, 100), 1, (64, 32)), img[::2, ::2][50:82, 100:164])
        assert resolve_mpp(reader) == (0.5, "ome: PhysicalSizeX")


def test_absurd_mpp_refused_unless_overridden(tmp_path):
    img = smooth_rgb(64, 64)
    for name, resolution, unit, expected in (("screen.tif", 72.0, "INCH", 25400 / 72), ("tiny.tif", 1e6, "CENTIMETER", 0.01)):
        path = tmp_path / name
        tifffile.imwrite(path, img, photometric="rgb", resolution=(resolution, resolution), resolutionunit=unit)
        with open_slide(path) as reader:
            assert reader.mpp == pytest.approx(expected)
            with pytest.raises(PipelineInputError, match=f"{name}.*implausible.*--mpp"):
                resolve_mpp(reader)
            assert resolve_mpp(reader, 0.5) == (0.5, "override") and reader.mpp == 0.5


def test_png_dpi_gives_mpp(tmp_path):
    path = tmp_path / "tile.png"
    Image.fromarray(smooth_rgb(32, 32)).save(path, dpi=(101600, 101600))  # 0.25 um/px
    with open_slide(path) as reader:
        assert reader.mpp == pytest.approx(0.25, rel=1e-3) and reader.mpp_source.startswith("png dpi")


# ----- pixel formats ----------------------------------------------------------------------
def test_rgba_gray_palette_and_16bit_inputs_come_out_uint8_rgb(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :10, 3] = 0  # transparent -> white
    rgba[:, 10:20, 3] = 128  # half -> blend with white
    rgba[:, 20:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    gray = np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "palette.png")
    gray16 = np.tile(np.arange(30, dtype=np.uint16) * 2000, (20, 1))
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    rgb16 = np.stack([gray16, gray16 // 2, 65535 - gray16], axis=2)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    tifffile.imwrite(tmp_path / "gray8.tif", gray)

    with open_slide(tmp_path / "rgba.png") as r:
        out = r.read_region((0, 0), 0, (30, 20))
        assert (out[:, :10] == 255).all()
        assert np.array_equal(out[0, 15], [227, 177, 152])  # (c*128 + 255*127) / 255, rounded
        assert np.array_equal(out[0, 25], [200, 100, 50])
    for name, expected in (("gray.png", gray), ("palette.png", gray), ("gray8.tif", gray),
                           ("gray16.png", (gray16 / 257 + 0.5).astype(np.uint8))):
        with open_slide(tmp_path / name) as r:
            out = r.read_region((0, 0), 0, (30, 20))
            assert out.dtype == np.uint8 and out.shape == (20, 30, 3), name
            for c in range(3):
                assert np.array_equal(out[..., c], expected), name
    with open_slide(tmp_path / "rgb16.tif") as r:
        out = r.read_region((0, 0), 0, (30, 20))
        assert out.dtype == np.uint8 and np.array_equal(out, (rgb16 / 257 + 0.5).astype(np.uint8))


def test_to_rgb_uint8_rules():
    assert to_rgb_uint8(np.ones((2, 2), bool)).tolist() == [[[255] * 3] * 2] * 2
    assert to_rgb_uint8(np.full((1, 1, 2), [0, 0], np.uint8)).tolist() == [[[255, 255, 255]]]  # transparent gray
    assert to_rgb_uint8(np.full((1, 1, 3), 0.5, np.float32)).tolist() == [[[128, 128, 128]]]
    # partial alpha on white (dropping it would give [0, 100, 200]): training and slides alike
    assert to_rgb_uint8(np.full((1, 1, 4), [0, 100, 200, 128], np.uint8)).tolist() == [[[127, 177, 227]]]
    assert to_rgb_uint8(np.full((1, 1, 3), 255.0), float_max=255.0).tolist() == [[[255, 255, 255]]]  # PanNuke's 0..255 floats, declared
    with pytest.raises(ValueError, match="0..1"):
        to_rgb_uint8(np.full((1, 1, 3), 200.0))
    with pytest.raises(ValueError, match="shape"):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


def test_a_png_reaches_the_model_alike_as_training_image_and_as_slide(tmp_path):
    """One pixel rule (models/pixels.py): partial alpha, gray+alpha and 16-bit alike."""
    from promptnucseg.models.data.formats import read_rgb

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)  # alpha anywhere in 0..255
    cases = {"rgba.png": Image.fromarray(rgba), "la.png": Image.fromarray(np.ascontiguousarray(rgba[..., 2:])), "gray16.png": Image.fromarray(rgba[..., 0].astype(np.uint16) * 250)}
    for name, img in cases.items():
        img.save(tmp_path / name)
        with open_slide(tmp_path / name, mpp_override=0.25) as r:
            on_slide = r.read_region((0, 0), 0, (30, 20))
        assert np.array_equal(read_rgb(tmp_path / name), on_slide), name


# ----- bad input ----------------------------------------------------------------------------
def _assert_one_line_error(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(err.value)
    assert str(path) in message and "Fix:" in message and "\n" not in message, message
    for word in words:
        assert word in message, message


def test_missing_folder_unsupported_and_non_slide_files(tmp_path):
    with pytest.raises(PipelineInputError) as err:
        open_slide(tmp_path / "nope.svs")
    _assert_one_line_error(err, tmp_path / "nope.svs", "not found")
    with pytest.raises(PipelineInputError) as err:
        open_slide(tmp_path)
    _assert_one_line_error(err, tmp_path, "folder")
    czi = tmp_path / "scan.czi"
    czi.write_bytes(b"ZISRAWFILE" + bytes(100))
    with pytest.raises(PipelineInputError) as err:
        open_slide(czi)
    _assert_one_line_error(err, czi, "unsupported file type '.czi'", "OME-)TIFF")
    for name in ("notes.svs", "notes.tif", "notes.ndpi", "notes.png", "notes.jpg", "notes.mrxs"):
        fake = tmp_path / name
        fake.write_text("this is a text file, renamed\n" * 20)
        with pytest.raises(PipelineInputError) as err:
            open_slide(fake)
        _assert_one_line_error(err, fake)
        assert any(w in str(err.value) for w in ("not a slide", "not a readable image", "OpenSlide cannot")), str(err.value)
    with pytest.raises(PipelineInputError, match="unknown slide backend"):
        open_slide(czi, backend="bioformats")


def test_tiatoolbox_backend_says_how_to_install(pyramid):
    try:
        import tiatoolbox  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tiatoolbox is installed; only its absence is tested here")
    with pytest.raises(PipelineInputError) as err:
        open_slide(pyramid[0], backend="tiatoolbox")
    _assert_one_line_error(err, pyramid[0], "pip install promptnucseg[tiatoolbox]")


@pytest.mark.parametrize("source, fraction", [
    (CMU, 0.5), (CMU, 0.97),
    *(pytest.param(p, f, marks=needs_slides) for p, f in ((TCGA, 0.5), (TCGA, 0.95), (KIDNEY, 0.5), (KIDNEY, 0.999))),
])
def test_truncated_real_slides_fail_at_open(tmp_path, source, fraction):
    data = real(source).read_bytes()
    copy = tmp_path / source.name
    copy.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(PipelineInputError) as err:
        open_slide(copy)
    _assert_one_line_error(err, copy)


def test_truncated_pyramid_and_png_fail_at_open(tmp_path, pyramid):
    data = pyramid[0].read_bytes()
    for fraction in (0.3, 0.8, 0.99):
        copy = tmp_path / f"cut{int(fraction * 100)}.tif"
        copy.write_bytes(data[: int(len(data) * fraction)])
        for backend in ("auto", "tifffile", "openslide"):
            with pytest.raises(PipelineInputError) as err:
                open_slide(copy, backend=backend)
            _assert_one_line_error(err, copy)
    png = tmp_path / "full.png"
    Image.fromarray(smooth_rgb(300, 300)).save(png)
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(PipelineInputError) as err:
        open_slide(cut)
    _assert_one_line_error(err, cut, "not a readable image")


def test_corrupt_tile_fails_on_read_with_input_error(tmp_path, pyramid):
    """A damaged tile in the middle passes the open-time probe; reading it must still name the file."""
    path, _ = pyramid
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tile = 1 * (1536 // 256) + 1  # row 1, column 1: level-0 pixels (256..512, 256..512)
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    data[offset : offset + count] = b"\x55" * count
    broken = tmp_path / "broken.tif"
    broken.write_bytes(bytes(data))
    for backend in ("openslide", "tifffile"):
        with open_slide(broken, backend=backend) as reader:
            assert reader.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
            with pytest.raises(PipelineInputError) as err:
                reader.read_region((300, 300), 0, (50, 50))
            _assert_one_line_error(err, broken, "cannot read pixels at level 0")


# ----- concurrency and pickling -----------------------------------------------------------------
def test_parallel_reads_match_sequential_reads(pyramid):
    path, _ = pyramid
    boxes = [(x, y) for x in range(0, 1400, 230) for y in range(0, 900, 170)]
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend=backend) as reader:
            expected = [reader.read_at_mpp(x, y, 300, 200, 0.5)[0] for x, y in boxes]
            results: dict[int, np.ndarray] = {}
            errors: list[BaseException] = []

            def work(indices: list[int]) -> None:
                try:
                    for i in indices:
                        results[i] = reader.read_at_mpp(*boxes[i], 300, 200, 0.5)[0]
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(list(range(k, len(boxes), 4)),)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
            assert all(np.array_equal(results[i], expected[i]) for i in range(len(boxes))), backend


def test_reader_pickles_by_reopening(pyramid):
    path, _ = pyramid
    with open_slide(path, backend="tifffile", mpp_override=0.3) as reader:
        clone = pickle.loads(pickle.dumps(reader))
        try:
            assert clone.describe() == reader.describe() and clone.mpp_source == "override"
            assert np.array_equal(clone.read_region((10, 20), 1, (40, 30)), reader.read_region((10, 20), 1, (40, 30)))
        finally:
            clone.close()


def test_the_reader_modules_form_no_import_cycle():
    """slides -> slide_backends -> slide_reader: the backends and the interface load without slides.py."""
    import subprocess
    import sys

    code = "import sys, promptnucseg.wsi_pipeline.slide_backends; print('promptnucseg.wsi_pipeline.slides' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
