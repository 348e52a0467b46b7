"""Generate the Python protobuf modules and mypy stubs for proto/imgpipe/v1 into services/imgpipe/v1.

    python -m imgpipe.contracts.codegen           # (re)write the generated package
    python -m imgpipe.contracts.codegen --check   # exit 1, listing the files, when it is stale

The generated package is committed so services need no protoc at run time; grpc_tools and
mypy-protobuf are dev-only dependencies, imported only here and only when generating.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE_DIR = Path("imgpipe", "v1")
# protoc writes imgpipe/v1/*_pb2.py under its output root, so the output root is services/.
OUTPUT_ROOT = REPO_ROOT / "services"
OUTPUT_DIR = OUTPUT_ROOT / PROTO_PACKAGE_DIR

# Files the generator owns besides protoc's output: the package marker and a ruff config that keeps
# ruff's linter and formatter off protoc's style (pyproject.toml's settings still apply to __init__.py).
EXTRA_FILES: Mapping[str, str] = {
    "__init__.py": '"""Generated from proto/imgpipe/v1 by `python -m imgpipe.contracts.codegen`."""\n',
}
GENERATED_SUFFIXES = (".py", ".pyi")


class CodegenError(RuntimeError):
    """protoc or the mypy plugin failed, or a tool is missing."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """The .proto files to compile, relative to the proto root (as protoc names them), sorted."""
    return sorted(path.relative_to(proto_root).as_posix() for path in proto_root.rglob("*.proto"))


def mypy_plugin() -> Path:
    # Next to this interpreter first: the venv's bin/ need not be on PATH (e.g. `.venv/bin/python -m`).
    beside = Path(sys.executable).parent / "protoc-gen-mypy"
    if beside.exists():
        return beside
    found = shutil.which("protoc-gen-mypy")
    if found is None:
        raise CodegenError("protoc-gen-mypy not found: install the dev dependencies (uv sync)")
    return Path(found)


def generate(proto_root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """Compile every proto; return the generated package's files by name (relative to OUTPUT_DIR)."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]  # dev-only, untyped
    except ImportError as exc:
        raise CodegenError("grpcio-tools is not installed: install the dev dependencies (uv sync)") from exc

    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="imgpipe-codegen-") as tmp:
        out = Path(tmp)
        argv = [
            "protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--plugin=protoc-gen-mypy={mypy_plugin()}",
            f"--python_out={out}",
            f"--mypy_out=quiet:{out}",
            *files,
        ]
        if protoc.main(argv) != 0:
            raise CodegenError("protoc failed (its messages are above)")
        package = out / PROTO_PACKAGE_DIR
        generated = {
            path.relative_to(package).as_posix(): path.read_bytes()
            for path in sorted(package.rglob("*"))
            if path.is_file()
        }
    generated.update({name: text.encode() for name, text in EXTRA_FILES.items()})
    return generated


def committed(output_dir: Path = OUTPUT_DIR) -> dict[str, bytes]:
    """The files of the committed generated package that the generator owns."""
    if not output_dir.is_dir():
        return {}
    return {
        path.relative_to(output_dir).as_posix(): path.read_bytes()
        for path in sorted(output_dir.rglob("*"))
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.suffix in GENERATED_SUFFIXES or path.name in EXTRA_FILES)
    }


def differences(expected: Mapping[str, bytes], actual: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """(kind, file name) per file that differs; kind is "stale", "missing" (not written yet) or "extra"
    (no longer generated, e.g. its .proto was removed)."""
    found = []
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            found.append(("missing", name))
        elif name not in expected:
            found.append(("extra", name))
        elif expected[name] != actual[name]:
            found.append(("stale", name))
    return found


WRITE_VERBS = {"missing": "created", "stale": "updated", "extra": "removed"}


def write(files: Mapping[str, bytes], output_dir: Path = OUTPUT_DIR) -> list[tuple[str, str]]:
    """Make output_dir hold exactly `files` (among generator-owned files); return what was done."""
    changes = differences(files, committed(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = output_dir / name
        if not target.exists() or target.read_bytes() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    for name in committed(output_dir).keys() - files.keys():
        (output_dir / name).unlink()
    return [(WRITE_VERBS[kind], name) for kind, name in changes]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgpipe.contracts.codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)
    try:
        files = generate()
    except CodegenError as exc:
        print(f"codegen: {exc}", file=sys.stderr)
        return 2
    shown = OUTPUT_DIR.relative_to(REPO_ROOT)
    changes = differences(files, committed()) if args.check else write(files)
    for kind, name in changes:
        print(f"{kind}: {shown / name}")
    if args.check and changes:
        print("generated protobuf code is stale: run `python -m imgpipe.contracts.codegen`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
