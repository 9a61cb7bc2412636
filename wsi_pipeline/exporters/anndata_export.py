"""All nuclei of a slide as one AnnData `.h5ad`, for scanpy / squidpy / SpatialData.

Layout (row i is nucleus i, in batch order, as in the zarr store and the table):
    obs        index `id` (the GeoJSON's UUIDs); `class` categorical (the model's class
               names); `class_score`, `mask_score` float32
    X (N, V)   float32 morphometrics, one variable per measurement key
    var        index = measurement key; `unit` ("1" = dimensionless), `name` (QuPath's)
    obsm       `spatial` (N, 2) float64 centroid x, y in level-0 pixels
    uns        `mpp` (µm per level-0 px: µm = spatial * mpp), `spatial_units`,
               `class_colors` (hex, aligned with the categories: scanpy's and squidpy's
               plots pick them up), `promptnucseg` (the run's metadata as JSON text)

Why h5py under anndata's own encoder: `anndata.AnnData(...).write_h5ad` needs every
column in memory at once. Here anndata's `write_elem` lays out each element (so the
encoding is anndata's, not a copy of its spec) with zero rows and resizable datasets, and
the rows are streamed in whole chunks (`appender.ChunkAppender`): memory is one chunk per
column, whatever the number of nuclei. anndata and h5py come with the optional extra
`promptnucseg[anndata]`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from promptnucseg.models.interface import hex_color
from ..errors import PipelineInputError
from ..morphometrics import ALL_MEASUREMENT_UNITS, ALL_MEASUREMENTS, MEASUREMENTS
from .appender import ChunkAppender
from ..atomic import atomic_file, ensure_output_folder

if TYPE_CHECKING:
    from ..nuclei import SlideNuclei

EXTRA_HINT = 'pip install "promptnucseg[anndata]"'
SPATIAL_UNITS = "level-0 pixels, x right, y down (multiply by uns['mpp'] for µm)"


def require_anndata() -> Any:
    """Import anndata's element writer, or say which extra to install (before hours of work)."""
    try:
        import h5py  # noqa: F401
        import pandas  # noqa: F401
        try:
            from anndata.io import write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import write_elem
    except ImportError as err:
        raise PipelineInputError(
            None, f"--formats anndata needs the anndata package ({err.name or err} is not installed)", f"{EXTRA_HINT}, or leave anndata out of --formats"
        ) from err
    return write_elem


def _region_categories(regions: tuple[Sequence[str], Sequence[str]]) -> dict[str, Any]:
    """The empty categorical `region` and `region_class` columns (their categories: each distinct name)."""
    import pandas as pd

    labels = list(dict.fromkeys(str(n) for n in regions[0]))
    classes = list(dict.fromkeys(str(c) for c in regions[1] if c))
    return {"region": pd.Categorical([], categories=labels), "region_class": pd.Categorical([], categories=classes)}


def _region_codes(regions: tuple[Sequence[str], Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Lookups from region index + 1 (0: no region) to the codes of the `region` and `region_class` categories."""
    labels = list(dict.fromkeys(str(n) for n in regions[0]))
    classes = list(dict.fromkeys(str(c) for c in regions[1] if c))
    by_label = np.array([-1] + [labels.index(str(n)) for n in regions[0]], np.int64)
    by_class = np.array([-1] + [classes.index(str(c)) if c else -1 for c in regions[1]], np.int64)
    return by_label, by_class


def write_anndata(
    path: str | Path,
    batches: Iterable["SlideNuclei"],
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    mpp: float,
    metadata: dict[str, Any] | None = None,
    measurement_keys: Sequence[str] | None = None,
    chunk_rows: int = 65536,
    regions: tuple[Sequence[str], Sequence[str]] | None = None,
) -> Path:
    """Stream nuclei into `path` (`.h5ad`), which appears only once complete.

    `regions` (each --regions region's label and class) adds the categorical obs columns
    `region` and `region_class` (missing for a nucleus in no region).

    `mpp` is the slide's level-0 microns per pixel; `measurement_keys` (default: every
    key of `morphometrics.MEASUREMENTS`) fixes the variables, and a batch whose
    measurements differ is refused rather than silently misaligned.
    """
    write_elem = require_anndata()
    import h5py
    import pandas as pd

    path = ensure_output_folder(path)
    keys = list(measurement_keys if measurement_keys is not None else MEASUREMENTS)
    names = [str(c) for c in class_names]
    if len(class_colors) < len(names):
        raise ValueError(f"{len(names)} class names but {len(class_colors)} colours")
    rows = int(chunk_rows)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"

        def growing(name: str, empty: Any, width: int | None = None) -> None:
            """Write `empty` (zero rows) through anndata with its row axis resizable."""
            shape = (None,) if width is None else (None, width)
            chunks = (rows,) if width is None else (rows, width)
            write_elem(f, name, empty, dataset_kwargs={"maxshape": shape, "chunks": chunks, "compression": "gzip", "compression_opts": 4})

        obs = pd.DataFrame(
            {
                "class": pd.Categorical([], categories=names),
                "class_score": np.zeros(0, np.float32),
                "mask_score": np.zeros(0, np.float32),
                **(_region_categories(regions) if regions is not None else {}),
            },
            index=pd.Index([], dtype=object, name="id"),
        )
        growing("obs", obs)
        growing("X", np.zeros((0, len(keys)), np.float32), len(keys))
        growing("obsm", {"spatial": np.zeros((0, 2), np.float64)}, 2)
        var = pd.DataFrame({"unit": [ALL_MEASUREMENT_UNITS.get(k, "") for k in keys], "name": [ALL_MEASUREMENTS.get(k, k) for k in keys]}, index=pd.Index(keys))
        write_elem(f, "var", var)
        for empty in ("layers", "obsp", "varm", "varp"):
            write_elem(f, empty, {})

        codes_dtype = f["obs/class/codes"].dtype
        cols = {
            "id": ChunkAppender(f["obs/id"]),
            "codes": ChunkAppender(f["obs/class/codes"]),
            "class_score": ChunkAppender(f["obs/class_score"]),
            "mask_score": ChunkAppender(f["obs/mask_score"]),
            **({k: ChunkAppender(f[f"obs/{k}/codes"]) for k in ("region", "region_class")} if regions is not None else {}),
            "X": ChunkAppender(f["X"]),
            "spatial": ChunkAppender(f["obsm/spatial"]),
        }
        region_codes = _region_codes(regions) if regions is not None else None
        n = 0
        for batch in batches:
            if list(batch.measurements) != keys:
                raise ValueError(f"batch measurements {list(batch.measurements)} differ from the variables {keys}")
            if not len(batch):
                continue
            bad = (batch.classes < 0) | (batch.classes >= len(names))
            if bad.any():
                raise ValueError(f"class index {int(batch.classes[bad][0])} has no name (class_names has {len(names)})")
            cols["id"].add(np.asarray(batch.ids, dtype=object))
            cols["codes"].add(batch.classes.astype(codes_dtype))
            cols["class_score"].add(np.asarray(batch.class_scores, np.float32))
            cols["mask_score"].add(np.asarray(batch.mask_scores, np.float32))
            if regions is not None:  # categorical codes: -1 is missing (no region, or a region without class)
                cols["region"].add(region_codes[0][batch.regions + 1].astype(f["obs/region/codes"].dtype))
                cols["region_class"].add(region_codes[1][batch.regions + 1].astype(f["obs/region_class/codes"].dtype))
            cols["X"].add(np.stack([np.asarray(batch.measurements[k], np.float32) for k in keys], axis=1).reshape(len(batch), len(keys)))
            cols["spatial"].add(np.asarray(batch.centroids, np.float64))
            n += len(batch)
        for appender in cols.values():
            appender.close()
        write_elem(f, "uns", {
            "mpp": float(mpp),
            "spatial_units": SPATIAL_UNITS,
            "class_colors": np.asarray([hex_color(class_colors[i]) for i in range(len(names))], dtype=object),
            "promptnucseg": json.dumps(metadata or {}, default=str),
        })
    return path
