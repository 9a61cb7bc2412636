"""The slide output folder's contract: its layout, the zarr column names and the report keys.

`promptnucseg segment` writes, and `promptnucseg report`, a resume and users' scripts read,
one folder per slide, `<out>/<stem>/`, where `<stem>` is the slide file's stem made safe and
unique by jail.py (`safe_name`, `~N` for another slide with the same stem):

    <stem>_report.json        the run report (REPORT_SUFFIX); written last, so it marks a finished slide
    <stem>.geojson[.gz]       QuPath detections
    <stem>.zarr               per-nucleus columns (ZarrColumns), attrs with ZARR_SLIDE_MPP ...
    <stem>_nuclei.parquet     the feature table (`.csv` beside it when pyarrow is missing)
    <stem>.h5ad               AnnData, with --formats ...,anndata
    <stem>_labels.tif         level-0 label image, with --label-map
    <stem>_regions.csv        per-region area, counts and densities, with --regions
    <stem>_overlay.png ...    `promptnucseg report`'s pictures, listed in <stem>_pictures.json
    .work/                    the resume journal (journal.py): manifest.json, parts/, progress.jsonl
    .promptnucseg.lock        the run holding the folder (locking.py)
    .promptnucseg-slide.json  the slide this folder belongs to (jail.py)

Every writer and reader takes these names from here. The names on disk are kept as
earlier versions wrote them (a rename would change every output byte and every resume
fingerprint): the slide's microns per pixel is called `slide_mpp` in code, in the zarr
attrs and in the resume fingerprint, and `mpp_used` in the run report (REPORT_SLIDE_MPP).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_SUFFIX = "_report.json"
PICTURES_SUFFIX = "_pictures.json"
INSETS = 3  # the report's zoomed insets at the model's µm/px, <stem>_inset_1.png ...
WORK_DIR = ".work"
LOCK_NAME = ".promptnucseg.lock"
JOURNAL_MANIFEST = "manifest.json"
JOURNAL_PARTS = "parts"
JOURNAL_PROGRESS = "progress.jsonl"

# the slide's level-0 microns per pixel, as each file spells it
REPORT_SLIDE_MPP = "mpp_used"
ZARR_SLIDE_MPP = "slide_mpp"


class ZarrColumns:
    """Array names in `<stem>.zarr` (layout in exporters/zarr_export.py)."""

    ID = "id"
    POINT = "point"
    CENTROID = "centroid"
    CLASS = "class"
    CLASS_SCORE = "class_score"
    MASK_SCORE = "mask_score"
    REGION = "region"  # with --regions: int16 index into attrs["regions"]["regions"], -1 none
    POLYGON_OFFSETS = "polygon_offsets"
    POLYGON_COORDS = "polygon_coords"
    MEASUREMENTS = "measurements"  # a group: one array per morphometrics.MEASUREMENTS key (+ CELL_MEASUREMENTS)
    # with --cell-expansion (GeoArrow's polygon layout): cell i's rings are p[i]..p[i+1]-1 of p = cell_polygon_offsets,
    # exterior first, then holes; ring j's closed vertices are cell_polygon_coords[r[j]:r[j+1]], r = cell_ring_offsets
    CELL_POLYGON_OFFSETS = "cell_polygon_offsets"
    CELL_RING_OFFSETS = "cell_ring_offsets"
    CELL_POLYGON_COORDS = "cell_polygon_coords"
    LABELS = "labels"


def slide_folder(out_root: str | Path, slide: str | Path, claim: bool = False) -> Path:
    """Where a slide's outputs, journal and lock live: one sub-folder per slide, named from its
    stem by `jail.safe_name` (plus `~N` when another slide with that stem came first); the
    folder name is also the prefix of its files. `claim` creates it and records the slide."""
    from .jail import slide_folder_for

    return slide_folder_for(out_root, slide, claim=claim)


@dataclass(frozen=True)
class SlideOutputs:
    """The paths of one slide folder's files."""

    folder: Path
    stem: str

    @property
    def report(self) -> Path:
        return self.folder / f"{self.stem}{REPORT_SUFFIX}"

    @property
    def work(self) -> Path:
        return self.folder / WORK_DIR

    @property
    def lock(self) -> Path:
        return self.folder / LOCK_NAME

    def geojson(self, gzip: bool = False) -> Path:
        return self.folder / (f"{self.stem}.geojson.gz" if gzip else f"{self.stem}.geojson")

    @property
    def zarr(self) -> Path:
        return self.folder / f"{self.stem}.zarr"

    @property
    def table(self) -> Path:
        return self.folder / f"{self.stem}_nuclei.parquet"

    @property
    def anndata(self) -> Path:
        return self.folder / f"{self.stem}.h5ad"

    @property
    def label_map(self) -> Path:
        return self.folder / f"{self.stem}_labels.tif"

    @property
    def regions(self) -> Path:
        return self.folder / f"{self.stem}_regions.csv"

    def written(
        self, formats: tuple[str, ...] | list[str], gzip: bool, label_map: bool, regions: bool = False
    ) -> dict[str, Path]:
        """The files a run with these settings writes, by the report's `outputs` keys."""
        paths = {"report": self.report}
        if "geojson" in formats:
            paths["geojson"] = self.geojson(gzip)
        if "zarr" in formats:
            paths["zarr"] = self.zarr
        if "table" in formats:
            paths["table"] = self.table
        if "anndata" in formats:
            paths["anndata"] = self.anndata
        if label_map:
            paths["label_map"] = self.label_map
        if regions:
            paths["regions"] = self.regions
        return paths

    def pictures(self) -> dict[str, Path]:
        """`promptnucseg report`'s files, by the keys of `<stem>_pictures.json`'s `files`."""
        return {
            "overlay": self.folder / f"{self.stem}_overlay.png",
            "zoom": self.folder / f"{self.stem}_overlay_zoom.png",
            "density": self.folder / f"{self.stem}_density.png",
            "areas": self.folder / f"{self.stem}_areas.png",
            "class_counts": self.folder / f"{self.stem}_class_counts.csv",
            **{f"inset_{i}": self.folder / f"{self.stem}_inset_{i}.png" for i in range(1, INSETS + 1)},
            "pictures": self.folder / f"{self.stem}{PICTURES_SUFFIX}",
        }

    def named(self, report: dict[str, Any], kind: str) -> Path:
        """The `kind` output the report names, looked up beside the report (the folder may
        have been moved or opened from another machine), else the default name."""
        named = (report.get("outputs") or {}).get(kind)
        if named and (self.folder / Path(named).name).exists():
            return self.folder / Path(named).name
        return getattr(self, kind)

    @staticmethod
    def of_report(report_path: Path) -> "SlideOutputs":
        return SlideOutputs(report_path.parent, report_path.name[: -len(REPORT_SUFFIX)])

    @staticmethod
    def find(folder: Path) -> "SlideOutputs | None":
        """The folder's outputs by its report: `<folder name>_report.json`, else the folder's
        only `*_report.json`; None when it has none."""
        own = folder / f"{folder.name}{REPORT_SUFFIX}"
        if own.is_file():
            return SlideOutputs(folder, folder.name)
        found = sorted(folder.glob(f"*{REPORT_SUFFIX}"))
        return SlideOutputs.of_report(found[0]) if found else None


def slide_mpp_of(report: dict[str, Any], zarr_attrs: dict[str, Any]) -> float | None:
    """The slide's level-0 µm/px of a finished run: the report's, else the store's, else the
    slide facts' (a report written by hand or cut down may lack the first)."""
    for value in (report.get(REPORT_SLIDE_MPP), zarr_attrs.get(ZARR_SLIDE_MPP), (report.get("slide_facts") or {}).get("mpp")):
        try:
            if value is not None and float(value) > 0 and math.isfinite(float(value)):
                return float(value)
        except (TypeError, ValueError):
            continue
    return None
