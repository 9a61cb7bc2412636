"""The Python API: an image array in memory, a slide through the CLI's own code path, a finished run back.

`segment_image` is for a region already in memory (a notebook, another library's tile): it
resamples to the model's µm/px, runs the predictor once over the whole array (its window
grid, as a one-pass run) and measures the nuclei with the pipeline's own stitch code, in the
array's pixels. `segment_slide` builds the `segment` command's flags from keyword arguments
(the flags' own names, defaults and range checks) and runs `cli_segment.execute`, so a notebook
run and a shell run of the same options write the same folder. `load_results` reads a
finished folder back as one DataFrame with the polygons. Imported lazily by `promptnucseg`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FixableError

if TYPE_CHECKING:
    import pandas as pd

MPP_RANGE = (0.05, 10.0)  # the CLI's plausible slide resolutions (wsi_pipeline.slides.MPP_MIN/MAX)
MAX_MODEL_PIXELS = 8192 * 8192  # one in-memory pass; beyond this a file through segment_slide tiles and resumes
MIN_MODEL_SIDE = 32  # smaller than a nucleus (plan.MIN_REGION_MODEL_PX)


class SlideFailed(FixableError):
    """`segment_slide` could not segment the slide; the message is the CLI's one line."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "see the message") -> None:
        super().__init__(path, problem, fix)


# ----- segment_image ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _predictor(spec: Any) -> Any:
    """A loaded predictor for a `ModelSpec` (the CLI's and the workers'), kept between calls
    (loading takes seconds and a GB)."""
    return spec.load()


def _check_mpp(mpp: Any) -> float:
    from promptnucseg.wsi_pipeline.errors import PipelineInputError

    fix = "pass mpp=<microns per pixel of the array> (e.g. 0.25 for a 40x scan, 0.5 for 20x)"
    if mpp is None:
        raise PipelineInputError(None, "segment_image needs the image's resolution: mpp is missing", fix)
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise PipelineInputError(None, f"mpp={mpp!r} is not a number", fix) from None
    if not math.isfinite(value) or not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        raise PipelineInputError(
            None,
            f"mpp={mpp!r} is not a plausible microscope resolution ({MPP_RANGE[0]:g}..{MPP_RANGE[1]:g} um/px)",
            fix,
        )
    return value


def _resample(rgb: np.ndarray, scale: float) -> np.ndarray:
    """The array at the model's µm/px: `scale` input px per model px, origin kept (the slide
    reader's rule: bilinear when shrinking, bicubic when enlarging)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    mw, mh = max(1, int(round(w / scale))), max(1, int(round(h / scale)))
    if abs(scale - 1.0) < 1e-9:
        return rgb
    resample = Image.Resampling.BILINEAR if scale >= 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((mw, mh), resample=resample, box=(0, 0, mw * scale, mh * scale)))


def _stains(model_rgb: np.ndarray) -> Any:
    """The image's own stain vectors, fitted as the pipeline fits a slide's (stains.fit_stains)."""
    from PIL import Image

    from promptnucseg.wsi_pipeline.stains import fit_stains
    from promptnucseg.wsi_pipeline.tissue import detect_tissue

    thumb = np.asarray(Image.fromarray(model_rgb).reduce(max(1, max(model_rgb.shape[:2]) // 1024)))
    tissue, _ = detect_tissue(thumb, max(1, thumb.shape[0] * thumb.shape[1] // 10000))
    return fit_stains(thumb, tissue, [model_rgb])


def segment_image(
    rgb: Any,
    mpp: float | None = None,
    model: str = "default",
    device: str = "auto",
    tta: bool = False,
    min_nucleus_um2: float | None = None,
) -> "pd.DataFrame":
    """Nuclei of an RGB image array as a DataFrame: one row per nucleus, coordinates in the array's pixels.

    `rgb`: (H, W, 3) uint8 (or any layout and dtype the pipeline's pixel rule takes: gray,
    RGBA, 16-bit); `mpp`: its microns per pixel, required (the model sees 0.25 µm/px: a 20x
    image segmented unresampled gives nuclei of half size); `model`: a bundled model's name or
    a model file, as `--model`. Columns: the nucleus table's (`id`, `point_x/y`, `centroid_x/y`,
    `class`, `class_name`, `class_score`, `mask_score`, measurements in µm units) plus `polygon`
    (shapely, array pixels). Fragments below the model's plausible size are dropped, as in a run.
    """
    import pandas as pd

    from promptnucseg.models.interface import to_rgb_uint8
    from promptnucseg.wsi_pipeline.errors import PipelineInputError
    from promptnucseg.wsi_pipeline.exporters.table_export import _columns
    from promptnucseg.wsi_pipeline.model_spec import ModelSpec
    from promptnucseg.wsi_pipeline.stitch import from_tile_nuclei

    mpp = _check_mpp(mpp)
    try:
        pixels = to_rgb_uint8(np.asarray(rgb), "rgb")
    except (ValueError, TypeError) as err:
        raise PipelineInputError(
            None, f"rgb is not an image array ({err})", "pass an (H, W, 3) uint8 RGB array"
        ) from err
    predictor = _predictor(ModelSpec(model, device=device, tta=tta))
    facts = predictor.facts()
    scale = facts.mpp / mpp  # input px per model px
    h, w = pixels.shape[:2]
    mh, mw = h / scale, w / scale
    if min(mh, mw) < MIN_MODEL_SIDE:
        raise PipelineInputError(
            None,
            f"the image is {w}x{h} px at {mpp:g} um/px, too small to hold a nucleus",
            f"pass at least {math.ceil(MIN_MODEL_SIDE * scale)} px a side",
        )
    if mh * mw > MAX_MODEL_PIXELS:
        raise PipelineInputError(
            None,
            f"the image is {w}x{h} px at {mpp:g} um/px, {mw * mh / 1e6:.0f} Mpx at the model's resolution, more than one in-memory pass takes",
            "save it as a TIFF and use promptnucseg.segment_slide(path, out=...), which tiles and resumes",
        )
    model_rgb = _resample(pixels, scale)
    tile = predictor.predict([model_rgb])[0]
    key = hashlib.sha256(pixels.tobytes()).hexdigest()[:32]
    found = from_tile_nuclei(
        tile,
        origin_level0=(0.0, 0.0),
        scale=scale,
        slide_key=key,
        rgb_tile=model_rgb,
        model_mpp=facts.mpp,
        stains=_stains(model_rgb),
    )
    smallest = facts.ranges.min_nucleus_um2 if min_nucleus_um2 is None else min_nucleus_um2
    if len(found):
        found = found.select(found.measurements["area_um2"] >= smallest)
    frame = pd.DataFrame(_columns(found, list(facts.class_names)))
    frame["polygon"] = found.polygons
    frame.attrs.update(
        {
            "mpp": mpp,
            "model_mpp": facts.mpp,
            "coordinates": "array pixels, x right, y down",
            "model": facts.describe().get("model"),
        }
    )
    return frame


# ----- segment_slide ---------------------------------------------------------------------------


@dataclass
class SlideRun:
    """One slide's finished run: its folder, the files written, the counts and the whole report."""

    slide: str
    folder: Path
    outputs: dict[str, Path]
    nuclei: int
    class_counts: dict[str, int]
    report: dict[str, Any]

    def load(self) -> "pd.DataFrame":
        """The run's nuclei (see `load_results`)."""
        return load_results(self.folder)


class _Parser(argparse.ArgumentParser):
    """The CLI's parser, raising instead of exiting: a bad option is a Python error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"segment_slide: {message}")


def _segment_parser() -> _Parser:
    from promptnucseg.wsi_pipeline.cli_segment import add_arguments

    parser = _Parser(prog="segment_slide", add_help=False)
    add_arguments(parser, "segment")
    return parser


def _argv(parser: argparse.ArgumentParser, options: dict[str, Any]) -> list[str]:
    """Keyword arguments as the CLI's flags: `tile_size=512` -> `--tile-size 512`, `gzip=True`
    -> `--gzip`, `roi=(x, y, w, h)` / `formats=[...]` -> comma lists; None and False leave a flag out."""
    flags = {opt: a for a in parser._actions for opt in a.option_strings}
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        action = flags.get(flag)
        if action is None or flag in ("--out", "--sample"):
            names = sorted({o[2:].replace("-", "_") for o in flags if o.startswith("--")} - {"out", "sample", "help"})
            raise TypeError(
                f"segment_slide() got an unknown option {key!r}; the options are the segment command's flags: {', '.join(names)}"
            )
        if value is None or value is False:
            continue
        if action.nargs == 0:  # a switch
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def segment_slide(path: str | Path, out: str | Path, **options: Any) -> SlideRun:
    """Segment one slide into `out/<stem>/` exactly as `promptnucseg segment PATH --out OUT ...` does.

    `options` are the command's flags by name (`model="typed"`, `roi=(x, y, w, h)`,
    `regions="tumour.geojson"`, `tile_size=512`, `formats=("geojson", "table")`,
    `no_progress=True`, ...), with the same defaults and checks. A finished folder with the same
    settings is returned as it is; other settings are refused unless `overwrite=True`. Raises
    the CLI's one-line error (`FixableError`) when the slide cannot be segmented.
    """
    from promptnucseg.wsi_pipeline.cli_segment import execute

    parser = _segment_parser()
    args = parser.parse_args([str(path), "--out", str(out), *_argv(parser, options)])
    outcome = execute(args)
    result = outcome.results[-1] if outcome.results else None
    if result is None or not result.ok:
        raise SlideFailed(
            None,
            (result.error if result is not None else f"{path}: not segmented (exit status {outcome.status})")
            or "failed",
        )
    report = result.report
    outputs = {k: Path(v).resolve() for k, v in (report.get("outputs") or {}).items()}  # absolute: the cwd may change
    return SlideRun(
        result.slide,
        outputs["report"].parent,
        outputs,
        int(report.get("nuclei", 0)),
        dict(report.get("class_counts") or {}),
        report,
    )


# ----- load_results ----------------------------------------------------------------------------


def _finished(folder: Path) -> tuple[Any, dict[str, Any]]:
    from promptnucseg.wsi_pipeline.errors import PipelineInputError
    from promptnucseg.wsi_pipeline.outputs import SlideOutputs

    found = SlideOutputs.find(folder) if folder.is_dir() else None
    if found is None and folder.is_dir():  # the --out folder of a one-slide run
        inner = [SlideOutputs.find(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        inner = [o for o in inner if o is not None]
        if len(inner) > 1:
            raise PipelineInputError(
                folder, f"holds {len(inner)} slide folders", "pass one slide's folder, e.g. " + str(inner[0].folder)
            )
        found = inner[0] if inner else None
    if found is None:
        raise PipelineInputError(
            folder,
            "holds no finished run (no *_report.json)",
            "pass a slide folder that `promptnucseg segment` finished",
        )
    try:
        report = json.loads(found.report.read_text())
    except (OSError, ValueError) as err:
        raise PipelineInputError(
            found.report, f"cannot be read ({err})", "rerun the slide with `promptnucseg segment --overwrite`"
        ) from err
    if not str(report.get("status", "")).startswith("complete"):
        raise PipelineInputError(
            found.report,
            f"is not a finished run (status {report.get('status')!r})",
            "run `promptnucseg segment` again with the same --out to finish it",
        )
    return found, report


def _from_zarr(path: Path) -> tuple["pd.DataFrame", list[Any]]:
    """The nucleus columns and polygons from `<stem>.zarr`."""
    import pandas as pd
    import zarr

    from promptnucseg.wsi_pipeline.nuclei import SlideNuclei
    from promptnucseg.wsi_pipeline.outputs import ZarrColumns as C

    g = zarr.open_group(str(path), mode="r")
    polygons = SlideNuclei.polygons_from_arrays(np.asarray(g[C.POLYGON_OFFSETS][:]), np.asarray(g[C.POLYGON_COORDS][:]))
    point, centroid = np.asarray(g[C.POINT][:]).reshape(-1, 2), np.asarray(g[C.CENTROID][:]).reshape(-1, 2)
    cols: dict[str, Any] = {
        "id": [v.decode() if isinstance(v, bytes) else str(v) for v in g[C.ID][:]],
        "point_x": point[:, 0],
        "point_y": point[:, 1],
        "centroid_x": centroid[:, 0],
        "centroid_y": centroid[:, 1],
        "class": np.asarray(g[C.CLASS][:]),
        "class_score": np.asarray(g[C.CLASS_SCORE][:]),
        "mask_score": np.asarray(g[C.MASK_SCORE][:]),
    }
    names = list(g.attrs.get("class_names") or [])
    if names:
        cols["class_name"] = [names[c] if 0 <= c < len(names) else "" for c in cols["class"].tolist()]
    if C.MEASUREMENTS in g:
        for k in g[C.MEASUREMENTS].array_keys():
            cols[k] = np.asarray(g[C.MEASUREMENTS][k][:])
    return pd.DataFrame(cols), polygons


def load_results(folder: str | Path) -> "pd.DataFrame":
    """The nuclei of a finished run: the table's columns plus `polygon` (shapely, level-0 px).

    `folder`: a slide's folder (`<out>/<stem>`) or the `--out` of a one-slide run. Reads the
    table (Parquet or CSV) and the polygons from the zarr store, else the GeoJSON; the report
    is in `.attrs["report"]`.
    """
    import pandas as pd

    from promptnucseg.wsi_pipeline.errors import PipelineInputError

    found, report = _finished(Path(folder))
    table, zarr_path = found.named(report, "table"), found.named(report, "zarr")
    polygons: list[Any] | None = None
    frame, zarr_ids = None, None
    if zarr_path.exists():
        frame, polygons = _from_zarr(zarr_path)
        zarr_ids = list(frame["id"])
    if table.exists():
        frame = (
            pd.read_parquet(table)
            if table.suffix == ".parquet"
            else pd.read_csv(table, keep_default_na=False, na_values=[""])
        )
    elif table.with_suffix(".csv").exists():
        frame = pd.read_csv(table.with_suffix(".csv"), keep_default_na=False, na_values=[""])
    if polygons is None:
        polygons = _geojson_polygons(found, report)
    if frame is not None and zarr_ids is not None and list(frame["id"].astype(str)) != zarr_ids:
        raise PipelineInputError(
            found.folder,
            "its table and zarr store list different nuclei",
            "rerun the slide with `promptnucseg segment --overwrite`",
        )
    if frame is None or polygons is None:
        raise PipelineInputError(
            found.folder,
            "has neither the nucleus table nor the zarr store",
            "rerun with --formats including table or zarr",
        )
    if len(polygons) != len(frame):
        raise PipelineInputError(
            found.folder,
            f"its table has {len(frame)} nuclei but its outlines {len(polygons)}",
            "rerun the slide with `promptnucseg segment --overwrite`",
        )
    frame["polygon"] = polygons
    cells = _cell_polygons(found, report, zarr_path) if report.get("cell_expansion_um") else None
    if cells is not None and len(cells) == len(frame):  # a run with --cell-expansion: each nucleus' cell
        frame["cell_polygon"] = cells
    frame.attrs["report"] = report
    return frame


def _cell_polygons(found: Any, report: dict[str, Any], zarr_path: Path) -> list[Any] | None:
    """The cells of a run with --cell-expansion, from the zarr store, else the GeoJSON's cell outlines."""
    import shapely

    from promptnucseg.wsi_pipeline.outputs import ZarrColumns as C

    if zarr_path.exists():
        import zarr

        g = zarr.open_group(str(zarr_path), mode="r")
        if C.CELL_POLYGON_COORDS in g:
            rings = (np.asarray(g[C.CELL_RING_OFFSETS][:]), np.asarray(g[C.CELL_POLYGON_OFFSETS][:]))
            coords = np.asarray(g[C.CELL_POLYGON_COORDS][:])
            return list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, rings))
    features = _geojson_features(found, report)
    return None if features is None else [shapely.geometry.shape(f["geometry"]) for f in features]


def _geojson_polygons(found: Any, report: dict[str, Any]) -> list[Any] | None:
    """The nuclei's outlines from the GeoJSON (a cell's nucleus is its `nucleusGeometry`)."""
    import shapely

    features = _geojson_features(found, report)
    if features is None:
        return None
    return [shapely.geometry.shape(f.get("nucleusGeometry", f["geometry"])) for f in features]


def _geojson_features(found: Any, report: dict[str, Any]) -> list[dict[str, Any]] | None:
    import gzip

    named = (report.get("outputs") or {}).get("geojson")
    if not named:
        return None
    path = found.folder / Path(str(named)).name
    if not path.exists():
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)["features"]
