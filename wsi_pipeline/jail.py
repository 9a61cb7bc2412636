"""The output folder is a jail: what `segment` writes, renames or deletes lies inside `--out`.

Three rules, owned here:

- **Safe folder names** (`safe_name`). A slide's folder name is its file's stem, with these
  characters written as `%XX` (the UTF-8 bytes, upper-case hex): `%`, `~`, `/`, `\\`, control
  characters, and a leading `.`; a name the run's own files use or that `promptnucseg report`
  skips (`report.html`, `*.zarr`) has its dots written `%2E`; an empty stem is `%00`; a name
  longer than 150 bytes is cut and ends in `~x` + 12 hex digits of the stem's SHA-256. So
  `...png` (stem `..`) gets `%2E.`, `..png` gets `%2E`, `report.html.png` gets `report%2Ehtml`,
  every ordinary name is itself, and two stems never share a name.
- **One slide, one folder** (`slide_folder_for`). The folder records its slide's identity in
  `IDENTITY_NAME` (resolved path, size, a hash of the file's first and last MiB). A different
  slide with the same stem gets the next free `<name>~2`, `<name>~3`, ... (`~` never occurs in
  a safe name otherwise); the same slide always finds its own folder again, whatever path it
  is given by.
- **Inside, after symlinks** (`require_inside`). A folder or file the pipeline would write or
  remove is resolved and refused when it lies outside `--out` (a slide folder that is a
  symlink, a `.work` that points elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import PipelineInputError

IDENTITY_NAME = ".promptnucseg-slide.json"
RUN_FILES = ("report.html",)  # files `promptnucseg report` writes into --out itself
SKIPPED_SUFFIXES = (".zarr",)  # folders `promptnucseg report` does not take for slide folders
MAX_NAME_BYTES = 150  # leaves room for `_overlay_zoom.png`, `.partial-<pid>` under 255 bytes
SUFFIX_MARK = "~"


def _escape(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))


def safe_name(stem: str) -> str:
    """The folder (and file-prefix) name of a slide with this stem: see the module's rules."""
    out = []
    for i, ch in enumerate(stem):
        code = ord(ch)
        if ch in "%~/\\" or code < 32 or code == 127 or 0xDC80 <= code <= 0xDCFF or (i == 0 and ch == "."):
            out.append(_escape(ch))
        else:
            out.append(ch)
    name = "".join(out) or "%00"
    lower = name.lower()
    if lower in RUN_FILES or lower.endswith(SKIPPED_SUFFIXES):
        name = name.replace(".", "%2E")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        cut = name.encode("utf-8")[: MAX_NAME_BYTES - 20].decode("utf-8", "ignore")
        cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut  # never end inside a %XX
        name = f"{cut}{SUFFIX_MARK}x{digest}"
    return name


def require_inside(root: str | Path, path: str | Path, what: str = "this path") -> Path:
    """`path`, after checking that it resolves (symlinks followed) to `root` or below it."""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise PipelineInputError(
            path, f"{what} resolves to {real}, outside the output folder {real_root}",
            "remove that symbolic link (promptnucseg writes and deletes only inside --out), or use another --out",
        )
    return Path(path)


def slide_identity(slide: str | Path) -> dict[str, Any]:
    """What tells one slide file from another: resolved path, size, first/last MiB hashed."""
    from .journal import quick_file_hash

    real = Path(slide).resolve()
    return {"slide": str(real), "size": real.stat().st_size, "fingerprint": quick_file_hash(real)}


def _same_slide(recorded: dict[str, Any], identity: dict[str, Any]) -> bool:
    return recorded.get("size") == identity["size"] and recorded.get("fingerprint") == identity["fingerprint"]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _belongs(folder: Path, identity: dict[str, Any]) -> bool | None:
    """True: the folder is this slide's; False: another slide's; None: nobody's yet."""
    if not os.path.lexists(folder):
        return None
    recorded = _read_json(folder / IDENTITY_NAME)
    if recorded is not None:
        return _same_slide(recorded, identity)
    # a folder of an earlier version (no identity file): its journal or report says whose it is
    from .outputs import JOURNAL_MANIFEST, REPORT_SUFFIX, WORK_DIR

    manifest = _read_json(folder / WORK_DIR / JOURNAL_MANIFEST)
    if manifest is not None:
        return (manifest.get("fingerprint") or {}).get("slide") == identity["fingerprint"]
    report = _read_json(folder / f"{folder.name}{REPORT_SUFFIX}")
    if report is not None and report.get("slide"):
        return Path(str(report["slide"])).resolve() == Path(identity["slide"])
    return None


def _claim(folder: Path, identity: dict[str, Any]) -> bool:
    """Record `identity` in the folder unless another slide got there first (atomic: the
    identity file appears whole, by a hard link of a finished temporary file)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / IDENTITY_NAME
    fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=folder)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump({**identity, "created_by": "promptnucseg"}, fh, indent=1)
        try:
            os.link(tmp, target)
        except FileExistsError:
            recorded = _read_json(target)
            return recorded is not None and _same_slide(recorded, identity)
        except OSError:  # a file system without hard links: second best, exclusive create
            try:
                with open(target, "x") as fh:
                    json.dump({**identity, "created_by": "promptnucseg"}, fh, indent=1)
            except FileExistsError:
                recorded = _read_json(target)
                return recorded is not None and _same_slide(recorded, identity)
        return True
    finally:
        os.unlink(tmp)


def slide_folder_for(out_root: str | Path, slide: str | Path, claim: bool = False) -> Path:
    """This slide's folder under `out_root`: `<safe name>`, or `<safe name>~N` when folders of
    other slides with the same stem came first. With `claim`, the folder is created and the
    slide's identity recorded in it; without, nothing is touched."""
    out = Path(out_root)
    base = safe_name(Path(slide).stem)
    try:
        identity = slide_identity(slide)
    except OSError:
        identity = None  # unreadable: the slide is refused later, by name, before any writing
    n = 1
    while True:
        folder = out / (base if n == 1 else f"{base}{SUFFIX_MARK}{n}")
        if folder.is_symlink():
            require_inside(out, folder, "the slide folder")
        whose = None if identity is None else _belongs(folder, identity)
        if whose is not False:
            if claim and identity is not None:
                require_inside(out, folder.parent, "the output folder")
                if not _claim(folder, identity):
                    n += 1
                    continue
            return folder
        n += 1
