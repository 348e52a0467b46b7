"""What a named stack remembers between runs (stack.json): ports, Kafka cluster id, credentials."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.localstack.layout import StackPaths

LOCAL = "local"
DOCKER = "docker"
EXTERNAL = "external"


def new_kafka_cluster_id() -> str:
    """A random Kafka Uuid as text (url-safe base64, no padding), like `kafka-storage random-uuid`."""
    while True:
        text = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka never hands out ids a CLI would read as an option
            return text


def _new_secret() -> str:
    # Hex only, so URLs and `export` lines never need quoting or escaping.
    return secrets.token_hex(16)


@dataclass
class StackConfig:
    """Chosen once per stack and kept, so a warm restart finds the same ports, data and passwords."""

    ports: dict[str, int] = field(default_factory=dict)
    kafka_cluster_id: str = field(default_factory=new_kafka_cluster_id)
    postgres_password: str = field(default_factory=_new_secret)
    minio_root_user: str = "imgpipe"
    minio_root_password: str = field(default_factory=_new_secret)
    backend: str = LOCAL
    # Per component: local, docker or external, as of the last `up`; doctor reports versions from it.
    sources: dict[str, str] = field(default_factory=dict)


def load_config(paths: StackPaths) -> StackConfig | None:
    try:
        data = json.loads(paths.config_file.read_text())
    except FileNotFoundError:
        return None
    known = {f.name for f in dataclasses.fields(StackConfig)}
    return StackConfig(**{key: value for key, value in data.items() if key in known})


def save_config(paths: StackPaths, config: StackConfig) -> None:
    """Write atomically and readable by the owner only: it holds passwords."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp: Path = paths.config_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dataclasses.asdict(config), handle, indent=2, sort_keys=True)
    tmp.replace(paths.config_file)
