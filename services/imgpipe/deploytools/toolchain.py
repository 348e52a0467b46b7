"""Install the pinned chart validation tools under `<cache>/chart-tools/` (idempotent).

    python -m imgpipe.deploytools.toolchain      # what `make chart-check` runs first

- helm and kubeconform: `go install` through the Go module proxy (GOMODCACHE and GOCACHE under the
  cache dir too, so a fresh clone downloads and builds into .cache/ only);
- Kubernetes, KEDA and Prometheus-operator schemas: `go mod download` of the modules that carry them,
  converted into kubeconform's file layout (k8s_schemas.py; kubeconform's own openapi2jsonschema.py
  for the CRDs);
- skaffold's JSON Schemas: `go mod download` of the skaffold module (no build);
- checkov: a virtualenv installed from a hashed lock with uv.

A marker file per step records what was installed; a step whose marker matches is skipped, so a warm
run takes well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imgpipe.deploytools import k8s_schemas, versions
from imgpipe.deploytools.versions import GoModule
from imgpipe.localstack.layout import cache_dir, repo_root

CHECKOV_LOCK = "tests/chart/checkov-requirements.txt"


class ToolchainError(RuntimeError):
    """A tool could not be installed; the message names the step and its log."""


@dataclass(frozen=True)
class Toolchain:
    """Where the installed tools and schemas are."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def kubeconform(self) -> Path:
        return self.bin_dir / "kubeconform"

    @property
    def checkov(self) -> Path:
        return self.root / "checkov" / "bin" / "checkov"

    @property
    def schemas_dir(self) -> Path:
        """kubeconform's `-schema-location` for Kubernetes' own kinds (`v<version>-standalone-strict/`)."""
        return self.root / "schemas" / "kubernetes"

    @property
    def crd_schemas_dir(self) -> Path:
        return self.root / "schemas" / "crds"

    @property
    def kubernetes_versions(self) -> tuple[str, ...]:
        return tuple(module.version.removeprefix("v") for module in versions.KUBERNETES)

    @property
    def go_mod_cache(self) -> Path:
        return self.root / "go" / "mod"

    def module_dir(self, module: GoModule) -> Path:
        return self.go_mod_cache / f"{_escape(module.path)}@{module.version}"

    def skaffold_schema(self, api_version: str) -> Path:
        """The JSON Schema of one skaffold config version, e.g. `skaffold/v4beta13`."""
        name = api_version.removeprefix("skaffold/")
        return self.module_dir(versions.SKAFFOLD) / versions.SKAFFOLD_SCHEMAS_DIR / f"{name}.json"

    def kubeconform_args(self, kubernetes_version: str) -> list[str]:
        return [
            str(self.kubeconform),
            "-strict",
            "-summary",
            "-kubernetes-version",
            kubernetes_version,
            "-schema-location",
            str(self.schemas_dir),
            "-schema-location",
            f"{self.crd_schemas_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        ]


def _escape(path: str) -> str:
    """The module cache's case encoding: an upper-case letter becomes `!` and its lower case."""
    return "".join(f"!{char.lower()}" if char.isupper() else char for char in path)


def default_toolchain() -> Toolchain:
    return Toolchain(cache_dir() / "chart-tools")


class _Installer:
    def __init__(self, toolchain: Toolchain, log: Callable[[str], None]) -> None:
        self.toolchain = toolchain
        self.log = log
        self.logs_dir = toolchain.root / "logs"
        self.markers_dir = toolchain.root / "markers"

    # -- plumbing ---------------------------------------------------------------------------------
    def go_env(self) -> dict[str, str]:
        root = self.toolchain.root
        return {
            **os.environ,
            "GOBIN": str(self.toolchain.bin_dir),
            "GOMODCACHE": str(root / "go" / "mod"),
            "GOCACHE": str(root / "go" / "build"),
            # Writable module cache, so `rm -rf .cache` (make clean) works without root.
            "GOFLAGS": "-modcacherw -buildvcs=false",
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }

    def run(
        self, step: str, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> str:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.logs_dir / f"{step}.log"
        started = time.monotonic()
        with log_file.open("w") as sink:
            sink.write(f"$ {' '.join(argv)}\n")
            sink.flush()
            result = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=sink, text=True)
            sink.write(result.stdout)
        if result.returncode != 0:
            tail = "\n".join(log_file.read_text().splitlines()[-15:])
            raise ToolchainError(f"{step} failed (exit {result.returncode}); log {log_file}:\n{tail}")
        self.log(f"  {step}: {time.monotonic() - started:.1f} s")
        return result.stdout

    def step(self, name: str, pin: object, action: Callable[[], object]) -> None:
        """Run `action` unless the marker says the same pin is already installed."""
        marker = self.markers_dir / f"{name}.json"
        wanted = json.dumps(pin, sort_keys=True, default=str)
        if marker.is_file() and marker.read_text() == wanted:
            return
        action()
        self.markers_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(wanted)

    def download(self, modules: tuple[GoModule, ...]) -> None:
        output = self.run(
            "go-mod-download",
            ["go", "mod", "download", "-json", *(module.ref for module in modules)],
            env=self.go_env(),
            cwd=self.toolchain.root,
        )
        decoder = json.JSONDecoder()
        reports, position = [], 0
        text = output.strip()
        while position < len(text):
            report, position = decoder.raw_decode(text, position)
            reports.append(report)
            while position < len(text) and text[position].isspace():
                position += 1
        sums = {f"{report['Path']}@{report['Version']}": report.get("Sum") for report in reports}
        for module in modules:
            if sums.get(module.ref) != module.sum:
                raise ToolchainError(
                    f"{module.ref}: sum {sums.get(module.ref)} is not the pinned {module.sum}"
                )

    # -- steps ------------------------------------------------------------------------------------
    def go_tools(self) -> None:
        self.step(
            "helm",
            [versions.HELM, versions.HELM_LDFLAGS],
            lambda: self.run(
                "go-install-helm",
                [
                    "go",
                    "install",
                    "-ldflags",
                    versions.HELM_LDFLAGS,
                    f"helm.sh/helm/v3/cmd/helm@{versions.HELM.version}",
                ],
                env=self.go_env(),
                cwd=self.toolchain.root,
            ),
        )
        self.step(
            "kubeconform",
            [versions.KUBECONFORM],
            lambda: self.run(
                "go-install-kubeconform",
                [
                    "go",
                    "install",
                    f"{versions.KUBECONFORM.path}/cmd/kubeconform@{versions.KUBECONFORM.version}",
                ],
                env=self.go_env(),
                cwd=self.toolchain.root,
            ),
        )

    def schemas(self) -> None:
        modules = (
            *versions.KUBERNETES,
            versions.KEDA,
            versions.PROMETHEUS_OPERATOR,
            versions.SKAFFOLD,
            versions.KUBECONFORM,
        )
        source = Path(k8s_schemas.__file__).read_bytes()
        pin = [
            modules,
            versions.KEDA_CRDS,
            versions.PROMETHEUS_OPERATOR_CRDS,
            hashlib.sha256(source).hexdigest(),
        ]
        self.step("schemas", pin, lambda: self._write_schemas(modules))

    def _write_schemas(self, modules: tuple[GoModule, ...]) -> None:
        self.download(modules)
        toolchain = self.toolchain
        for module in versions.KUBERNETES:
            swagger = toolchain.module_dir(module) / "api" / "openapi-spec" / "swagger.json"
            out = toolchain.schemas_dir / f"{module.version}-standalone-strict"
            shutil.rmtree(out, ignore_errors=True)
            count = k8s_schemas.write_schemas(swagger, out)
            self.log(f"  kubernetes {module.version}: {count} schemas")
        crds = [toolchain.module_dir(versions.KEDA) / path for path in versions.KEDA_CRDS]
        crds += [
            toolchain.module_dir(versions.PROMETHEUS_OPERATOR) / path
            for path in versions.PROMETHEUS_OPERATOR_CRDS
        ]
        shutil.rmtree(toolchain.crd_schemas_dir, ignore_errors=True)
        toolchain.crd_schemas_dir.mkdir(parents=True)
        script = toolchain.module_dir(versions.KUBECONFORM) / "scripts" / "openapi2jsonschema.py"
        self.run(
            "crd-schemas",
            [sys.executable, str(script), *map(str, crds)],
            # `-<group's first label>-<version>`: kubeconform's KindSuffix; strict at the root too.
            env={
                **os.environ,
                "FILENAME_FORMAT": "{kind}-{group}-{version}",
                "DENY_ROOT_ADDITIONAL_PROPERTIES": "1",
            },
            cwd=toolchain.crd_schemas_dir,
        )

    def checkov(self) -> None:
        root = repo_root()
        if root is None:
            raise ToolchainError("checkov's lock lives in the repository; run from a checkout")
        lock = root / CHECKOV_LOCK
        pin = [versions.CHECKOV_VERSION, hashlib.sha256(lock.read_bytes()).hexdigest()]
        self.step("checkov", pin, lambda: self._install_checkov(lock))

    def _install_checkov(self, lock: Path) -> None:
        uv = shutil.which("uv") or str((repo_root() or Path.cwd()) / ".cache" / "tools" / "bin" / "uv")
        venv = self.toolchain.root / "checkov"
        env = {
            **os.environ,
            "UV_CACHE_DIR": str(self.toolchain.root / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
        }
        env.pop("VIRTUAL_ENV", None)
        shutil.rmtree(venv, ignore_errors=True)
        self.run("checkov-venv", [uv, "venv", "--quiet", "--python", "3.11", str(venv)], env=env)
        self.run(
            "checkov-install",
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv / "bin" / "python"),
                "--require-hashes",
                "-r",
                str(lock),
            ],
            env=env,
        )


def ensure_toolchain(
    toolchain: Toolchain | None = None, log: Callable[[str], None] | None = None
) -> Toolchain:
    """Install whatever is missing or stale; quick when everything is in place."""
    toolchain = toolchain or default_toolchain()
    toolchain.root.mkdir(parents=True, exist_ok=True)
    installer = _Installer(toolchain, log or (lambda line: print(line, file=sys.stderr)))
    # The Go build is CPU-bound, the rest mostly waits on downloads: run them side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(task) for task in (installer.go_tools, installer.schemas, installer.checkov)]
        errors = [future.exception() for future in futures]
    problems = [str(error) for error in errors if error is not None]
    if problems:
        raise ToolchainError("\n".join(problems))
    return toolchain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    started = time.monotonic()
    try:
        toolchain = ensure_toolchain()
    except ToolchainError as exc:
        print(f"chart toolchain: {exc}", file=sys.stderr)
        return 1
    print(f"chart toolchain ready in {toolchain.root} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
