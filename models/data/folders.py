"""Finding a data set's files: images, labels and class files are paired by file stem."""
from __future__ import annotations

from pathlib import Path


def files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str = "files") -> dict[str, Path]:
    """stem -> path of the files in `folder` ending in one of `suffixes` (any letter case),
    in name order; hidden files (".DS_Store", "._a.png") are skipped.

    Two files with one stem are an error: which one is meant cannot be guessed. `what`
    names them in that error ("label maps", "images").
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in found:
            raise ValueError(f"{folder}: two {what} for '{path.stem}' ({found[path.stem].name}, {path.name}). Fix: keep one of them")
        found[path.stem] = path
    return found
