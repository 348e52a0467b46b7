"""The local stack's pure parts: ports, rendered configs, endpoint selection, pid files, waiting."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from imgpipe.localstack import kafka, minio, postgres
from imgpipe.localstack.config import StackConfig, new_kafka_cluster_id, save_config
from imgpipe.localstack.endpoints import (
    Endpoints,
    ExternalEndpointError,
    external_endpoint_fields,
    parse_env_file,
    redact_url,
    render_env_file,
    render_exports,
)
from imgpipe.localstack.install import KAFKA_POM, MARKER_NAME, is_installed, parse_go_version
from imgpipe.localstack.layout import CACHE_DIR_ENV, Installation, StackPaths, cache_dir
from imgpipe.localstack.ports import assign_ports, is_port_free
from imgpipe.localstack.processes import PidRecord, read_pid_file
from imgpipe.localstack.stack import BACKEND_ENV, StackError, external_components, select_backend
from imgpipe.localstack.versions import KAFKA_VERSION, MINIO_MODULE, MINIO_VERSION
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.unit

ENDPOINTS = Endpoints(
    kafka_bootstrap_servers="127.0.0.1:19092",
    database_url="postgresql+psycopg://imgpipe:secret@127.0.0.1:15432/imgpipe",
    s3_endpoint_url="http://127.0.0.1:19000",
    s3_access_key_id="imgpipe",
    s3_secret_access_key="s3secret",
)


def test_kafka_version_is_the_one_the_pom_resolves() -> None:
    pom_version = re.search(r"<kafka.version>(.+?)</kafka.version>", KAFKA_POM.read_text())
    assert pom_version is not None
    assert pom_version.group(1) == KAFKA_VERSION


# --- waiting


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), 5, "answers", interval=0.001) == "ready"


def test_wait_until_names_what_it_waited_for_on_timeout() -> None:
    with pytest.raises(TimeoutError, match="waiting for the impossible"):
        wait_until(lambda: False, 0.05, "the impossible", interval=0.01)


def test_wait_until_lets_the_predicate_abort() -> None:
    def died() -> bool:
        raise RuntimeError("process exited")

    with pytest.raises(RuntimeError, match="process exited"):
        wait_until(died, 5, "a dead process")


# --- ports


def test_assigned_ports_are_distinct_and_free() -> None:
    ports = assign_ports(["a", "b", "c", "d", "e"], remembered={})
    assert len(set(ports.values())) == 5
    assert all(is_port_free(port) for port in ports.values())


def test_a_remembered_free_port_is_kept_and_a_taken_one_replaced() -> None:
    free = assign_ports(["free"], remembered={})["free"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        ports = assign_ports(["kept", "moved"], remembered={"kept": free, "moved": taken})
    assert ports["kept"] == free
    assert ports["moved"] != taken


def test_ports_of_running_servers_are_kept_unchecked() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        held = listener.getsockname()[1]
        assert assign_ports(["running"], remembered={"running": held}, keep=["running"]) == {"running": held}


# --- rendered server configuration


def test_kafka_properties_describe_a_loopback_single_node_kraft_cluster() -> None:
    settings = {
        **kafka.SINGLE_NODE_SETTINGS,
        **kafka.listener_settings(
            listen_host="127.0.0.1",
            broker_port=19092,
            controller_port=19093,
            advertised="127.0.0.1:19092",
            voter_host="127.0.0.1",
        ),
    }
    lines = kafka.render_properties(settings).splitlines()
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in lines
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in lines
    assert "controller.quorum.voters=1@127.0.0.1:19093" in lines
    assert "auto.create.topics.enable=false" in lines
    assert "offsets.topic.replication.factor=1" in lines
    assert "group.initial.rebalance.delay.ms=0" in lines


def test_kafka_container_env_uses_the_apache_image_spelling() -> None:
    env = kafka.container_env({"offsets.topic.replication.factor": "1", "process.roles": "broker,controller"})
    assert env == {"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1", "KAFKA_PROCESS_ROLES": "broker,controller"}


def test_postgres_listens_on_loopback_only_with_a_private_socket_dir() -> None:
    argv = postgres.server_argv(Path("/pg/bin"), Path("/state/data"), 15432, Path("/state/run"))
    assert argv[0] == "/pg/bin/postgres"
    assert "listen_addresses=127.0.0.1" in argv
    assert "port=15432" in argv
    assert "unix_socket_directories=/state/run" in argv


def test_postgres_database_url_is_a_sqlalchemy_psycopg_url() -> None:
    assert postgres.database_url("pw", 15432) == "postgresql+psycopg://imgpipe:pw@127.0.0.1:15432/imgpipe"


def test_minio_binds_api_and_console_to_loopback() -> None:
    argv = minio.server_argv("/bin/minio", "/data", 19000, 19001, "/certs")
    assert argv[:3] == ["/bin/minio", "server", "/data"]
    assert argv[argv.index("--address") + 1] == "127.0.0.1:19000"
    assert argv[argv.index("--console-address") + 1] == "127.0.0.1:19001"


def test_kafka_cluster_ids_are_16_byte_url_safe_uuids() -> None:
    cluster_id = new_kafka_cluster_id()
    assert len(cluster_id) == 22
    assert not cluster_id.startswith("-")
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


# --- endpoints


def test_endpoints_use_the_variable_names_the_services_read() -> None:
    assert ENDPOINTS.as_env() == {
        "IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "IMGPIPE_DATABASE_URL": "postgresql+psycopg://imgpipe:secret@127.0.0.1:15432/imgpipe",
        "IMGPIPE_S3_ENDPOINT_URL": "http://127.0.0.1:19000",
        "IMGPIPE_S3_ACCESS_KEY_ID": "imgpipe",
        "IMGPIPE_S3_SECRET_ACCESS_KEY": "s3secret",
        "IMGPIPE_S3_BUCKET": "imgpipe",
        "IMGPIPE_S3_REGION": "us-east-1",
    }


def test_env_file_round_trips_and_exports_need_no_quotes() -> None:
    env = ENDPOINTS.as_env()
    assert Endpoints.from_env(parse_env_file(render_env_file(env))) == ENDPOINTS
    exports = render_exports(env).splitlines()
    assert (
        exports[1]
        == "export IMGPIPE_DATABASE_URL=postgresql+psycopg://imgpipe:secret@127.0.0.1:15432/imgpipe"
    )
    assert render_exports({"X": "a b"}) == "export X='a b'\n"


def test_no_environment_means_every_component_runs_locally() -> None:
    assert external_endpoint_fields({"PATH": "/bin"}) == {}


def test_an_external_endpoint_replaces_only_its_component() -> None:
    external = external_endpoint_fields(
        {"IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "IMGPIPE_DATABASE_URL": ""}
    )
    assert external == {"kafka": {"kafka_bootstrap_servers": "kafka:9092"}}


def test_external_s3_needs_credentials_and_defaults_bucket_and_region() -> None:
    with pytest.raises(ExternalEndpointError, match="IMGPIPE_S3_ACCESS_KEY_ID"):
        external_endpoint_fields({"IMGPIPE_S3_ENDPOINT_URL": "https://s3.example"})
    external = external_endpoint_fields(
        {
            "IMGPIPE_S3_ENDPOINT_URL": "https://s3.example",
            "IMGPIPE_S3_ACCESS_KEY_ID": "key",
            "IMGPIPE_S3_SECRET_ACCESS_KEY": "secret",
        }
    )
    assert external["minio"]["s3_bucket"] == "imgpipe"
    assert external["minio"]["s3_region"] == "us-east-1"


def test_printed_database_urls_hide_the_password() -> None:
    assert redact_url(ENDPOINTS.database_url) == "postgresql+psycopg://imgpipe:***@127.0.0.1:15432/imgpipe"
    assert redact_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


# --- backend choice


def _no_engine() -> bool:
    return False


def _engine() -> bool:
    return True


def test_local_backend_is_chosen_without_asking_docker() -> None:
    def must_not_probe() -> bool:
        raise AssertionError("docker probed")

    assert select_backend({BACKEND_ENV: "local"}, must_not_probe) == "local"


def test_auto_backend_follows_the_engine() -> None:
    assert select_backend({}, _no_engine) == "local"
    assert select_backend({}, _engine) == "docker"


def test_asking_for_docker_without_an_engine_is_an_error() -> None:
    with pytest.raises(StackError, match="no Docker engine"):
        select_backend({BACKEND_ENV: "docker"}, _no_engine)
    with pytest.raises(StackError, match="auto, local or docker"):
        select_backend({BACKEND_ENV: "podman"}, _engine)


# --- pid files


def _own_start_time() -> int:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def test_a_pid_file_names_a_running_process_only_with_its_start_time() -> None:
    assert PidRecord(os.getpid(), _own_start_time()).is_running()
    assert not PidRecord(os.getpid(), _own_start_time() + 1).is_running()  # pid reused by someone else


def test_a_pid_that_no_longer_exists_is_stale() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert not PidRecord(pid_max + 1, 0).is_running()  # never a valid pid


def test_unreadable_pid_files_count_as_stale(tmp_path: Path) -> None:
    (tmp_path / "kafka.pid").write_text("{not json")
    assert read_pid_file(tmp_path / "kafka.pid") is None
    assert read_pid_file(tmp_path / "missing.pid") is None
    record = PidRecord(123, 456, ("java",))
    (tmp_path / "ok.pid").write_text(record.to_json())
    assert read_pid_file(tmp_path / "ok.pid") == record


# --- install and layout


def test_go_versions_are_parsed_from_go_env() -> None:
    assert parse_go_version("go1.26.8\n") == (1, 26)
    assert parse_go_version("go1.24rc1") == (1, 24)
    assert parse_go_version("devel") is None


def test_cache_dir_can_be_moved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    assert StackPaths.for_stack("test").root == tmp_path / "stack-test"


def test_stack_names_are_safe_directory_names() -> None:
    with pytest.raises(ValueError, match="invalid stack name"):
        StackPaths.for_stack("../etc")


def test_a_cached_install_needs_its_marker(tmp_path: Path) -> None:
    installation = Installation(tmp_path)
    installation.minio_home.mkdir(parents=True)
    installation.minio_binary.write_bytes(b"")
    assert not is_installed("minio", installation)  # binary without marker: an interrupted install
    marker = {"module": MINIO_MODULE, "version": MINIO_VERSION}
    (installation.minio_home / MARKER_NAME).write_text(json.dumps(marker))
    assert is_installed("minio", installation)


def test_postgres_is_stopped_with_fast_shutdown() -> None:
    assert postgres.PostgresServer.stop_signal == signal.SIGINT  # what `pg_ctl stop -m fast` sends


def test_a_variable_naming_the_stacks_own_server_does_not_make_it_external(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    paths = StackPaths.for_stack("own")
    save_config(paths, StackConfig(ports={"kafka": 19092, "kafka_controller": 19093}, backend="local"))
    assert external_components(paths, {"IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092"}) == {}
    elsewhere = external_components(paths, {"IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:29092"})
    assert elsewhere == {"kafka": {"kafka_bootstrap_servers": "127.0.0.1:29092"}}
