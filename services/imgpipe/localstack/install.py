"""`imgpipe stack install`: the real servers, built or fetched through the package registries.

Kafka: jars resolved by Maven from kafka-pom.xml. MinIO: built from source through the Go module proxy
(no prebuilt binaries reachable here). Postgres: Debian's postgresql-15. Each cached install carries a
marker file naming its inputs, so an unchanged install is skipped in milliseconds and a half-finished
one (no marker) is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgpipe.localstack.endpoints import COMPONENTS, KAFKA, MINIO, POSTGRES
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.layout import Installation, cache_dir, file_lock
from imgpipe.localstack.versions import KAFKA_VERSION, MINIO_MODULE, MINIO_VERSION, POSTGRES_MAJOR

log = logging.getLogger(__name__)

KAFKA_POM = Path(__file__).with_name("kafka-pom.xml")
MARKER_NAME = ".installed.json"
MIN_GO_VERSION = (1, 24)  # MinIO's go.mod at the pinned commit says `go 1.24.0`
JAVA_APT_PACKAGE = "openjdk-17-jre-headless"
MAVEN_APT_PACKAGE = "maven"
POSTGRES_APT_PACKAGE = f"postgresql-{POSTGRES_MAJOR}"


class InstallError(LocalStackError):
    """A server of the local stack cannot be installed; the message says what to do."""


def _expected_kafka_marker() -> dict[str, str]:
    return {"kafka_version": KAFKA_VERSION, "pom_sha256": hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()}


def _expected_minio_marker() -> dict[str, str]:
    return {"module": MINIO_MODULE, "version": MINIO_VERSION}


def _marker_matches(home: Path, expected: dict[str, str], artifact: Path) -> bool:
    try:
        return bool(json.loads((home / MARKER_NAME).read_text()) == expected and artifact.is_file())
    except (FileNotFoundError, ValueError):
        return False


def is_installed(component: str, installation: Installation) -> bool:
    if component == KAFKA:
        return _marker_matches(installation.kafka_home, _expected_kafka_marker(), installation.kafka_core_jar)
    if component == MINIO:
        return _marker_matches(installation.minio_home, _expected_minio_marker(), installation.minio_binary)
    if component == POSTGRES:
        return (installation.postgres_bin / "postgres").is_file()
    raise ValueError(f"unknown component {component!r}")


def parse_go_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `go env GOVERSION` output such as 'go1.26.8' or 'go1.24rc1'."""
    match = re.search(r"go(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise InstallError(
            "MinIO is built from source and needs Go >= 1.24, but `go` is not on PATH. Debian 12's golang "
            "package is 1.19, too old: install Go >= 1.24 (go.dev/dl) and put its bin/ on PATH."
        )
    output = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout
    version = parse_go_version(output)
    if version is None or version < MIN_GO_VERSION:
        raise InstallError(
            f"MinIO {MINIO_VERSION} needs Go >= {MIN_GO_VERSION[0]}.{MIN_GO_VERSION[1]}, "
            f"but {go} is {output.strip() or 'unknown'}: install a newer Go (go.dev/dl)."
        )
    return go


def _missing_apt_packages(wanted: set[str], todo: set[str]) -> list[str]:
    packages = []
    if KAFKA in wanted and shutil.which("java") is None:
        packages.append(JAVA_APT_PACKAGE)  # needed to run Kafka, cached or not
    if KAFKA in todo and shutil.which("mvn") is None:
        packages.append(MAVEN_APT_PACKAGE)
    if POSTGRES in todo:
        packages.append(POSTGRES_APT_PACKAGE)
    return packages


def apt_install(packages: list[str], log_path: Path) -> None:
    """Install Debian packages (as root), with apt-get's output in `log_path`."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise InstallError(
            f"missing Debian packages {', '.join(packages)}: install them "
            f"(`sudo apt-get install -y {' '.join(packages)}`) or run `imgpipe stack install` as root"
        )
    log.info("installing %s with apt-get", " ".join(packages))
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], log_path, "apt-get update", env=env)
    _run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        log_path,
        "apt-get install",
        env=env,
    )


def _run(argv: list[str], log_path: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run an install step with its output in a log file; on failure raise with the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as output:
        output.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        output.flush()
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise InstallError(f"{what} failed (exit {result.returncode}); log {log_path}:\n{tail}")


def _replace_dir(partial: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def _install_kafka(installation: Installation) -> None:
    home = installation.kafka_home
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    log.info("kafka: resolving Kafka %s jars with Maven (about 30 s cold)", KAFKA_VERSION)
    started = time.monotonic()
    _run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        installation.logs / "install-kafka.log",
        "Maven (Kafka jars)",
    )
    _replace_dir(partial, installation.kafka_libs)
    (home / MARKER_NAME).write_text(json.dumps(_expected_kafka_marker()))
    log.info("kafka: installed in %.0f s", time.monotonic() - started)


def _install_minio(installation: Installation, go: str) -> None:
    home = installation.minio_home
    partial = home.with_name(home.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("minio: building %s@%s with Go (about 3 min cold)", MINIO_MODULE, MINIO_VERSION)
    started = time.monotonic()
    _run(
        [go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"],
        installation.logs / "install-minio.log",
        "go install (MinIO)",
        env={"GOBIN": str(partial)},
    )
    (partial / MARKER_NAME).write_text(json.dumps(_expected_minio_marker()))
    _replace_dir(partial, home)
    log.info("minio: installed in %.0f s", time.monotonic() - started)


def ensure_installed(components: Iterable[str] = COMPONENTS) -> Installation:
    """Install the servers of `components` into the cache, skipping what is already there."""
    installation = Installation(cache_dir())
    wanted = set(components)
    if unknown := wanted - set(COMPONENTS):
        raise ValueError(f"unknown components {sorted(unknown)}")
    installation.cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(installation.cache_dir / "install.lock"):
        todo = {component for component in wanted if not is_installed(component, installation)}
        packages = _missing_apt_packages(wanted, todo)
        if not todo and not packages:
            return installation
        go = _check_go() if MINIO in todo else None  # fail before any slow step
        if packages:
            apt_install(packages, installation.logs / "install-apt.log")
        if POSTGRES in todo and not is_installed(POSTGRES, installation):
            raise InstallError(f"{installation.postgres_bin / 'postgres'} is still missing after apt-get")
        builds = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="install") as pool:
            if KAFKA in todo:
                builds.append(pool.submit(_install_kafka, installation))
            if MINIO in todo and go is not None:
                builds.append(pool.submit(_install_minio, installation, go))
        for build in builds:
            build.result()  # re-raises the first failure after both finished
    return installation
