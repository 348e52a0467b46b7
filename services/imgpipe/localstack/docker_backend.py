"""The same stack as containers, through testcontainers, when a Docker engine is reachable.

Used by `start_stack` when `docker info` succeeds and IMGPIPE_STACK_BACKEND is not `local`. Containers
are named imgpipe-<stack>-<component> and labelled with the stack, so `stop_stack` (often a later process
than the one that started them) finds and removes them; testcontainers' Ryuk reaper is therefore off.
Host ports come from the same stack.json as the local processes, so Kafka's advertised listener is known
before the container starts. Data lives in the containers: `down` removes it (unlike the local backend).

Not exercised here: the development machines have the docker CLI but no engine.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from imgpipe.localstack.config import StackConfig
from imgpipe.localstack.endpoints import DEFAULT_BUCKET, DEFAULT_REGION, KAFKA, MINIO, POSTGRES
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.layout import StackPaths
from imgpipe.localstack.parallel import describe_errors, run_parallel
from imgpipe.localstack.ports import assign_ports
from imgpipe.localstack.versions import KAFKA_IMAGE, MINIO_IMAGE, POSTGRES_IMAGE
from imgpipe.localstack.waiting import wait_until

log = logging.getLogger(__name__)

STACK_LABEL = "dev.imgpipe.stack"
READY_TIMEOUT_SECONDS = 180.0  # includes image pulls on a fresh engine
KAFKA_BROKER_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, MINIO_PORT = 9092, 9093, 5432, 9000


def engine_available() -> bool:
    """Whether a Docker engine answers, not merely whether the docker CLI is installed."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=15, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def container_name(stack: str, component: str) -> str:
    return f"imgpipe-{stack}-{component}"


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def container_running(stack: str, component: str) -> bool:
    name = container_name(stack, component)
    return bool(_docker("ps", "-q", "--filter", f"name=^{name}$", "--filter", "status=running"))


def stop_containers(stack: str) -> None:
    ids = _docker("ps", "-aq", "--filter", f"label={STACK_LABEL}={stack}").split()
    if ids:
        _docker("rm", "-f", "-v", *ids)
        log.info("removed %d container(s) of stack %s", len(ids), stack)


def start_containers(
    paths: StackPaths, config: StackConfig, components: list[str]
) -> dict[str, dict[str, str]]:
    """Run each component's container (or reuse a running one) and wait until it serves."""
    # Imported here: only this backend needs testcontainers, and importing it costs time.
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient

    from imgpipe.localstack import kafka, minio, postgres

    testcontainers_config.ryuk_disabled = True  # lifetime is up..down, across processes
    host = DockerClient().host()
    port_names = {KAFKA: ("kafka",), POSTGRES: ("postgres",), MINIO: ("minio",)}
    running = {c for c in components if container_running(paths.name, c)}
    chosen = assign_ports(
        [n for c in components for n in port_names[c]],
        config.ports,
        keep=[n for c in running for n in port_names[c]],
    )
    config.ports.update(chosen)

    def run(
        component: str, image: str, env: dict[str, str], ports: dict[int, int], command: str | None = None
    ) -> None:
        if component in running:
            return
        name = container_name(paths.name, component)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)  # a stopped leftover
        container = DockerContainer(
            image, env=env, name=name, command=command, labels={STACK_LABEL: paths.name}
        )
        for container_port, host_port in ports.items():
            container.with_bind_ports(container_port, host_port)
        container.start()
        log.info("%s: container %s started from %s", component, name, image)

    def start_kafka() -> dict[str, str]:
        broker_port = config.ports["kafka"]
        settings = {
            **kafka.SINGLE_NODE_SETTINGS,
            **kafka.listener_settings(
                listen_host="0.0.0.0",
                broker_port=KAFKA_BROKER_PORT,
                controller_port=KAFKA_CONTROLLER_PORT,
                advertised=f"{host}:{broker_port}",
                voter_host="localhost",
            ),
        }
        env = {**kafka.container_env(settings), "CLUSTER_ID": config.kafka_cluster_id}
        run(KAFKA, KAFKA_IMAGE, env, {KAFKA_BROKER_PORT: broker_port})
        bootstrap = f"{host}:{broker_port}"
        wait_until(
            lambda: kafka.metadata_ready(bootstrap), READY_TIMEOUT_SECONDS, "Kafka container to be ready"
        )
        return {"kafka_bootstrap_servers": bootstrap}

    def start_postgres() -> dict[str, str]:
        env = {
            "POSTGRES_USER": postgres.APP_ROLE,
            "POSTGRES_PASSWORD": config.postgres_password,
            "POSTGRES_DB": postgres.APP_DATABASE,
        }
        run(POSTGRES, POSTGRES_IMAGE, env, {POSTGRES_PORT: config.ports["postgres"]})
        url = postgres.database_url(config.postgres_password, config.ports["postgres"], host=host)
        wait_until(lambda: postgres.url_ready(url), READY_TIMEOUT_SECONDS, "Postgres container to be ready")
        return {"database_url": url}

    def start_minio() -> dict[str, str]:
        env = {"MINIO_ROOT_USER": config.minio_root_user, "MINIO_ROOT_PASSWORD": config.minio_root_password}
        command = f"server /data --address :{MINIO_PORT}"
        run(MINIO, MINIO_IMAGE, env, {MINIO_PORT: config.ports["minio"]}, command=command)
        s3 = {
            "s3_endpoint_url": f"http://{host}:{config.ports['minio']}",
            "s3_access_key_id": config.minio_root_user,
            "s3_secret_access_key": config.minio_root_password,
            "s3_bucket": DEFAULT_BUCKET,
            "s3_region": DEFAULT_REGION,
        }
        wait_until(
            lambda: minio.health_ready(s3["s3_endpoint_url"]), READY_TIMEOUT_SECONDS, "MinIO container"
        )
        minio.ensure_bucket(s3)
        return s3

    starters = {KAFKA: start_kafka, POSTGRES: start_postgres, MINIO: start_minio}
    fields, errors = run_parallel({component: starters[component] for component in components})
    if errors:
        raise LocalStackError(describe_errors(errors))
    return fields
