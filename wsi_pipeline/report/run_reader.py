"""Reading a finished run: the nuclei store a chunk of rows at a time, the class names and
colours, each slide folder's report and state (finished, failed, unfinished).

Memory: the zarr store (`exporters.zarr_export`) is read one chunk of rows at a time; only
the per-nucleus class and area columns (6 bytes a nucleus) are held whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import PipelineInputError
from ..outputs import ZarrColumns as C
from ..outputs import SlideOutputs

RENDERER_VERSION = 2  # 2: zoomed insets at the model's µm/px
FALLBACK_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


# ----- the zarr store, a chunk of rows at a time ------------------------------------------


class NucleusColumns:
    """Read-only view of a `<stem>.zarr` nuclei store; rows are read in chunk-sized slices."""

    REQUIRED = (C.CENTROID, C.CLASS, C.POLYGON_OFFSETS, C.POLYGON_COORDS)

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = Path(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            missing = [k for k in self.REQUIRED if k not in self.root]
        except Exception as err:  # zarr raises several types for a broken store
            raise PipelineInputError(self.path, f"is not a readable nuclei store ({type(err).__name__}: {err})", "rerun the slide with `promptnucseg segment --overwrite`") from err
        if missing:
            raise PipelineInputError(self.path, f"nuclei store lacks the arrays {', '.join(missing)}", "rerun the slide with `promptnucseg segment --overwrite`")
        self.attrs: dict[str, Any] = dict(self.root.attrs)
        self.n = int(self.root[C.CLASS].shape[0])
        self.chunk_rows = max(1, int(self.root[C.CLASS].chunks[0]))

    def row_slices(self) -> Iterator[slice]:
        for a in range(0, self.n, self.chunk_rows):
            yield slice(a, min(a + self.chunk_rows, self.n))

    def centroids(self, rows: slice) -> np.ndarray:
        return np.asarray(self.root[C.CENTROID][rows], np.float64).reshape(-1, 2)

    def classes(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.root[C.CLASS][s], np.int64) for s in self.row_slices()]) if self.n else np.zeros(0, np.int64)

    def areas_um2(self) -> np.ndarray | None:
        if self.n == 0:
            return np.zeros(0)
        if C.MEASUREMENTS not in self.root or "area_um2" not in self.root[C.MEASUREMENTS]:
            return None
        arr = self.root[C.MEASUREMENTS]["area_um2"]
        return np.concatenate([np.asarray(arr[s], np.float64) for s in self.row_slices()]) if self.n else np.zeros(0)

    def rings(self, rows: slice, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, offsets, coords) of the outlines of `rows` (or its `keep` subset,
        local indices); offsets index into coords, which holds only the vertices read."""
        local = np.arange(rows.stop - rows.start) if keep is None else np.asarray(keep, np.int64)
        if not len(local):
            return local, np.zeros(1, np.int64), np.zeros((0, 2))
        lo, hi = int(local.min()), int(local.max())
        o = np.asarray(self.root[C.POLYGON_OFFSETS][rows.start + lo : rows.start + hi + 2], np.int64)
        coords = np.asarray(self.root[C.POLYGON_COORDS][int(o[0]) : int(o[-1])], np.float64).reshape(-1, 2)
        starts, ends = o[local - lo] - o[0], o[local - lo + 1] - o[0]
        if keep is None:
            return local + rows.start, o - o[0], coords
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(local) else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return local + rows.start, offsets, coords[take]


# ----- class names and colours ------------------------------------------------------------


@dataclass
class ClassInfo:
    names: list[str]
    colors: list[tuple[int, int, int]]

    @staticmethod
    def from_metadata(attrs: dict[str, Any], report: dict[str, Any], n_classes: int) -> "ClassInfo":
        model = report.get("model") if isinstance(report.get("model"), dict) else {}
        names = [str(c) for c in (attrs.get("class_names") or model.get("class_names") or list(report.get("class_counts") or {}))]
        colors: list[tuple[int, int, int]] = []
        for c in attrs.get("class_colors") or []:
            try:
                colors.append(tuple(int(v) for v in list(c)[:3]))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                colors.append(FALLBACK_COLORS[len(colors) % len(FALLBACK_COLORS)])
        k = max(n_classes, len(names))
        names += [f"class {i}" for i in range(len(names), k)]
        colors += [FALLBACK_COLORS[i % len(FALLBACK_COLORS)] for i in range(len(colors), k)]
        return ClassInfo(names, colors)


# ----- one slide folder -------------------------------------------------------------------


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _inputs(report_path: Path, zarr_path: Path, max_side: int) -> dict[str, Any]:
    return {"renderer": RENDERER_VERSION, "max_side": int(max_side), "report": _stamp(report_path), "zarr": _stamp(zarr_path / "zarr.json")}


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PipelineInputError(path, f"is not readable JSON ({err})", "rerun the slide with `promptnucseg segment`; the file may be from a killed run") from err
    if not isinstance(data, dict):
        raise PipelineInputError(path, "holds no JSON object", "rerun the slide with `promptnucseg segment`")
    return data


def pictures_up_to_date(folder: Path, max_side: int = 2048) -> bool:
    """True when the pictures exist and were rendered from the current report and store."""
    outputs = SlideOutputs.find(folder)
    if outputs is None:
        return False
    try:
        done = json.loads(outputs.pictures()["pictures"].read_text())
        report = json.loads(outputs.report.read_text())
    except (OSError, ValueError):
        return False
    if done.get("inputs") != _inputs(outputs.report, outputs.named(report, "zarr"), max_side):
        return False
    return all((folder / name).is_file() for name in (done.get("files") or {}).values())


def _region(report: dict[str, Any], attrs: dict[str, Any], dims: tuple[int, int]) -> tuple[float, float, float, float]:
    """The level-0 region that was segmented (x, y, w, h): the ROI if one was given."""
    roi = attrs.get("roi") or (report.get("settings") or {}).get("roi")
    if isinstance(roi, (list, tuple)) and len(roi) == 4:
        return tuple(float(v) for v in roi)  # type: ignore[return-value]
    return 0.0, 0.0, float(dims[0]), float(dims[1])


# ----- every slide folder of a run ------------------------------------------------------------


@dataclass
class SlideEntry:
    """One slide folder of a run: finished (report ok), failed, or unfinished."""

    folder: Path
    stem: str
    state: str  # "finished", "failed", "unfinished"
    report: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    pictures: dict[str, Any] | None = None


def find_slides(out_dir: Path) -> list[SlideEntry]:
    """Every slide folder under `out_dir` (and `out_dir` itself if it is one), by stem."""
    from ..journal import SWAP, Journal

    entries: list[SlideEntry] = []
    folders = [out_dir] + sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr"))
    real_out = out_dir.resolve()
    for folder in folders:
        if folder != out_dir and real_out not in folder.resolve().parents:  # a link out of the run: never written into
            entries.append(SlideEntry(folder, folder.name, "failed", problem=f"links outside the run folder (to {folder.resolve()}); promptnucseg report writes only inside {out_dir}"))
            continue
        outputs = SlideOutputs.find(folder)
        journal = Journal(folder)
        if outputs is None:
            if journal.active:
                n = len(journal.done())
                entries.append(SlideEntry(folder, folder.name, "unfinished", problem=f"{n} batch{'es' if n != 1 else ''} of tiles done so far; run the same `promptnucseg segment` command again to resume"))
            continue
        stem, report_path = outputs.stem, outputs.report
        try:
            report = load_json(report_path)
        except PipelineInputError as err:
            entries.append(SlideEntry(folder, stem, "failed", problem=str(err)))
            continue
        status = str(report.get("status", "complete"))
        if not status.startswith("complete"):  # "complete" or "complete with unreadable regions"
            why = report.get("error") or f"status {status!r}"
            entries.append(SlideEntry(folder, stem, "failed", report, problem=str(why)))
        elif (journal.work / SWAP).is_file():
            entries.append(SlideEntry(folder, stem, "unfinished", report, problem="a rerun was swapping in its outputs; run the same `promptnucseg segment` command again to finish"))
        elif journal.active:  # outputs are swapped in as a set: these are the earlier run's, whole
            entries.append(SlideEntry(folder, stem, "finished", report, problem="a rerun is in progress or was killed (the .work journal is present); these results are the earlier complete run's, which stay until the new set is complete"))
        else:
            entries.append(SlideEntry(folder, stem, "finished", report))
    return sorted(entries, key=lambda e: e.stem)
