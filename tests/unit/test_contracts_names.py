"""No topic name is spelled twice: outside schemas/ (and prose in docs/), code asks the registry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from imgpipe.contracts.registry import default_registry

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# A topic name: one of the registry's prefixes, then segments ending in a version. The version keeps
# module paths (a package imgpipe/callback/ is imported as imgpipe.callback.x) from matching.
TOPIC_NAME = re.compile(r"imgpipe\.(?:tasks|callback|retry|deadletter)\.(?:[a-z0-9-]+\.)*v[0-9]+\b")


def allowed(path: str) -> bool:
    if path.startswith("schemas/"):
        return True
    if path.startswith("docs/") and path.endswith(".md"):
        return True
    return path.startswith("services/imgpipe/v1/")  # generated from proto/


def repository_files() -> list[str]:
    """Tracked and untracked files that git does not ignore (so not .venv/ or .cache/)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [name for name in listing.stdout.decode().split("\0") if name and (REPO / name).is_file()]


def test_the_pattern_matches_every_registered_name() -> None:
    for spec in default_registry():
        assert TOPIC_NAME.fullmatch(spec.name), spec.name
    assert not TOPIC_NAME.search("from imgpipe.callback.app import main; group = 'imgpipe.callback'")


def test_topic_names_appear_only_in_the_registry() -> None:
    offenders = []
    for name in repository_files():
        if allowed(name):
            continue
        try:
            text = (REPO / name).read_text()
        except UnicodeDecodeError:
            continue  # binary
        offenders += [f"{name}: {match.group()}" for match in TOPIC_NAME.finditer(text)]

    assert offenders == [], "ask imgpipe.contracts.registry for topic names instead"
