"""Print the README's "Two commands", one per line, exactly as a user would type them.

`.ci/run` runs what this prints, so CI runs the README's words and nothing else: when the README
changes its commands, CI changes with it, and a README that no longer works turns CI red.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def two_commands(text: str) -> list[str]:
    """The shell lines (comments stripped) of the first bash block under '## Two commands'."""
    section = re.search(r"^## Two commands\s*$(.*?)^## ", text, re.M | re.S)
    if section is None:
        raise SystemExit(f"{README}: no '## Two commands' section")
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    if block is None:
        raise SystemExit(f"{README}: the '## Two commands' section has no ```bash block")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    if len(commands) != 2:
        raise SystemExit(f"{README}: expected 2 commands in '## Two commands', found {len(commands)}")
    return commands


if __name__ == "__main__":
    print("\n".join(two_commands(README.read_text())))
    sys.exit(0)
