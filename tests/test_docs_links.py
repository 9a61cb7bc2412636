"""Every relative link in the user docs leads to a file that exists.

The README is short and links out to docs/; a doc moved or renamed without its links would leave a
user at a 404 on GitHub. Anchors (`#...`) are not checked: only the file part of each link.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "models" / "weights").glob("MODEL_CARD*.md")), REPO / "benchmarks" / "README.md"]
# [text](target) and [text](target "title"), not images' remote URLs; inline code spans are skipped
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that point inside the repository (no scheme, no bare anchor)."""
    targets = LINK.findall(CODE.sub("", text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_the_link_finder_sees_relative_links_and_skips_urls_anchors_and_code():
    text = ("[a](docs/a.md) [b](../b.md#part) [c](https://x.org/c.md) [d](#anchor) `[e](e.md)`\n"
            "```\n[f](f.md)\n```\n[g](mailto:me@x.org)")
    assert relative_links(text) == ["docs/a.md", "../b.md#part"]


@pytest.mark.parametrize("doc", [d for d in DOCS if d.exists()], ids=lambda d: str(d.relative_to(REPO)))
def test_every_relative_link_points_at_an_existing_file(doc: Path):
    broken = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to missing files {broken}; fix the path or the file name"


def test_the_readme_links_every_doc():
    """A doc no one links to is a doc no user finds: the README's "More" list names each one."""
    readme = set(relative_links((REPO / "README.md").read_text(encoding="utf-8")))
    missing = [d.name for d in sorted((REPO / "docs").glob("*.md")) if f"docs/{d.name}" not in readme]
    assert not missing, f"README.md does not link {missing}; add them to its 'More' list"
