"""The committed generated code matches proto/, and proto/ passes buf lint (STANDARD)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgpipe.contracts import codegen

pytestmark = pytest.mark.unit


def test_generated_code_is_up_to_date() -> None:
    stale = codegen.differences(codegen.generate(), codegen.committed())

    assert stale == [], "run `python -m imgpipe.contracts.codegen` and commit services/imgpipe/v1/"


def test_check_mode_lists_stale_files(tmp_path: Path) -> None:
    output = tmp_path / "v1"
    files = codegen.generate()
    codegen.write(files, output)
    (output / "task_pb2.py").write_text("# edited by hand\n")
    (output / "removed_pb2.py").write_text("")

    assert codegen.differences(files, codegen.committed(output)) == [
        ("extra", "removed_pb2.py"),
        ("stale", "task_pb2.py"),
    ]
    assert codegen.write(files, output) == [("removed", "removed_pb2.py"), ("updated", "task_pb2.py")]
    assert codegen.differences(files, codegen.committed(output)) == []


def buf() -> str:
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    assert found, "buf not found: install the dev dependencies (buf-bin)"
    return found


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [buf(), "lint"], cwd=codegen.REPO_ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
