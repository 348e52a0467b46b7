"""The console script's own options (the subcommands have their own tests)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from imgpipe import cli
from imgpipe.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"imgpipe {metadata.version('imgpipe')}"
    assert re.fullmatch(r"imgpipe \d+\.\d+\.\d+\S*", out)


def test_the_distribution_is_the_project_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == cli.DISTRIBUTION
    assert cli.version() == project["version"]


def test_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert cli.version() == "unknown"
