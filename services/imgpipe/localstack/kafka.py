"""Kafka 3.9 in KRaft mode (combined broker + controller, one node), run from the Maven-resolved jars."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from imgpipe.localstack.endpoints import KAFKA
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.ports import LOOPBACK, is_port_open
from imgpipe.localstack.processes import ProcessSpec
from imgpipe.localstack.server import LocalServer

# librdkafka logs through Python logging instead of writing to stderr while a broker is starting.
_client_log = logging.getLogger("imgpipe.localstack.librdkafka")

HEAP = "-Xmx768m"

# Settings of a single-node development cluster; the same for the local process and the container.
SINGLE_NODE_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    # One broker: internal topics cannot have more replicas than that.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    # Consumers in tests join a group and expect an assignment at once.
    "group.initial.rebalance.delay.ms": "0",
    # Topics come from the registry (schemas/topics/), never from a typo in a producer.
    "auto.create.topics.enable": "false",
}

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
# Per-request and per-segment chatter would fill the log of a long-running dev stack.
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
"""


def listener_settings(
    *, listen_host: str, broker_port: int, controller_port: int, advertised: str, voter_host: str
) -> dict[str, str]:
    """Where the broker and controller listen and what address clients are told to use."""
    return {
        "listeners": f"PLAINTEXT://{listen_host}:{broker_port},CONTROLLER://{listen_host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised}",
        "controller.quorum.voters": f"1@{voter_host}:{controller_port}",
    }


def render_properties(settings: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def container_env(settings: dict[str, str]) -> dict[str, str]:
    """The apache/kafka image's spelling of server properties: KAFKA_ + upper case, '.' -> '_'."""
    return {
        "KAFKA_" + key.upper().replace("_", "__").replace(".", "_"): value for key, value in settings.items()
    }


@dataclass(frozen=True)
class ClusterMetadata:
    brokers: int
    topics: int


def fetch_metadata(bootstrap_servers: str, timeout: float = 5.0) -> ClusterMetadata:
    """A metadata request through the real client; raises KafkaException when the cluster is unreachable."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": _client_log}
    admin = AdminClient(config)
    metadata = admin.list_topics(timeout=timeout)
    return ClusterMetadata(brokers=len(metadata.brokers), topics=len(metadata.topics))


def metadata_ready(bootstrap_servers: str) -> bool:
    try:
        return fetch_metadata(bootstrap_servers, timeout=3.0).brokers > 0
    except KafkaException:
        return False


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalStackError(
            "java is not on PATH: run `imgpipe stack install` (it installs openjdk-17 as root)"
        )
    return java


class KafkaServer(LocalServer):
    component = KAFKA
    port_names = ("kafka", "kafka_controller")

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def settings(self) -> dict[str, str]:
        broker_port, controller_port = self.port("kafka"), self.port("kafka_controller")
        return {
            **SINGLE_NODE_SETTINGS,
            **listener_settings(
                listen_host=LOOPBACK,
                broker_port=broker_port,
                controller_port=controller_port,
                advertised=f"{LOOPBACK}:{broker_port}",
                voter_host=LOOPBACK,
            ),
            "log.dirs": str(self.data_dir),
        }

    def _classpath(self) -> str:
        return f"{self.installation.kafka_libs}/*"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # Rewritten on every start: the ports may have changed since the last run.
        (self.home / "server.properties").write_text(render_properties(self.settings()))
        (self.home / "log4j.properties").write_text(LOG4J_PROPERTIES)
        if (self.data_dir / "meta.properties").is_file():
            return
        # KRaft storage is formatted once with the stack's cluster id; a warm start skips this JVM run.
        result = subprocess.run(
            [
                _java(),
                "-cp",
                self._classpath(),
                f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                self.config.kafka_cluster_id,
                "-c",
                str(self.home / "server.properties"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalStackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def process(self) -> ProcessSpec:
        return ProcessSpec(
            argv=(
                _java(),
                HEAP,
                "-Djava.awt.headless=true",
                "-XX:+ExitOnOutOfMemoryError",
                f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
                "-cp",
                self._classpath(),
                "kafka.Kafka",
                str(self.home / "server.properties"),
            ),
            cwd=self.home,
        )

    def is_ready(self) -> bool:
        # A TCP check first keeps librdkafka from retrying against a port nobody listens on yet.
        return is_port_open(self.port("kafka")) and metadata_ready(self.address)

    def endpoint_fields(self) -> dict[str, str]:
        return {"kafka_bootstrap_servers": self.address}
