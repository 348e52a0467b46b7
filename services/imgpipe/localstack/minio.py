"""MinIO, the S3-compatible object store, built from source and run as its own process."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imgpipe.localstack.endpoints import DEFAULT_BUCKET, DEFAULT_REGION, MINIO
from imgpipe.localstack.ports import LOOPBACK
from imgpipe.localstack.processes import ProcessSpec
from imgpipe.localstack.server import LocalServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_client(fields: Mapping[str, str]) -> S3Client:
    """A boto3 client for the Endpoints' S3 fields (path-style: MinIO serves buckets under one host)."""
    return boto3.client(
        "s3",
        endpoint_url=fields["s3_endpoint_url"],
        aws_access_key_id=fields["s3_access_key_id"],
        aws_secret_access_key=fields["s3_secret_access_key"],
        region_name=fields.get("s3_region", DEFAULT_REGION),
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 2},
        ),
    )


def health_status(endpoint_url: str, probe: str = "ready", timeout: float = 3.0) -> int | None:
    """HTTP status of MinIO's /minio/health/<probe>, or None when nothing answers."""
    try:
        with urllib.request.urlopen(
            f"{endpoint_url.rstrip('/')}/minio/health/{probe}", timeout=timeout
        ) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def health_ready(endpoint_url: str) -> bool:
    return health_status(endpoint_url) == 200


def ensure_bucket(fields: Mapping[str, str]) -> None:
    client = s3_client(fields)
    bucket = fields.get("s3_bucket", DEFAULT_BUCKET)
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise


def bucket_exists(fields: Mapping[str, str]) -> bool:
    try:
        s3_client(fields).head_bucket(Bucket=fields.get("s3_bucket", DEFAULT_BUCKET))
    except (ClientError, BotoCoreError):
        return False
    return True


def server_argv(binary: str, data_dir: str, port: int, console_port: int, certs_dir: str) -> list[str]:
    return [
        binary,
        "server",
        data_dir,
        "--address",
        f"{LOOPBACK}:{port}",
        "--console-address",
        f"{LOOPBACK}:{console_port}",
        # Its own certs dir instead of ~/.minio, so stacks never share state through $HOME.
        "--certs-dir",
        certs_dir,
    ]


class MinioServer(LocalServer):
    component = MINIO
    port_names = ("minio", "minio_console")

    def prepare(self) -> None:
        for sub in ("data", "certs"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)

    def process(self) -> ProcessSpec:
        return ProcessSpec(
            argv=tuple(
                server_argv(
                    str(self.installation.minio_binary),
                    str(self.home / "data"),
                    self.port("minio"),
                    self.port("minio_console"),
                    str(self.home / "certs"),
                )
            ),
            env={
                "MINIO_ROOT_USER": self.config.minio_root_user,
                "MINIO_ROOT_PASSWORD": self.config.minio_root_password,
                "MINIO_UPDATE": "off",  # no update checks against the internet
            },
            cwd=self.home,
        )

    def is_ready(self) -> bool:
        return health_ready(self.endpoint_fields()["s3_endpoint_url"])

    def bootstrap(self) -> None:
        ensure_bucket(self.endpoint_fields())

    def endpoint_fields(self) -> dict[str, str]:
        return {
            "s3_endpoint_url": f"http://{self.address}",
            "s3_access_key_id": self.config.minio_root_user,
            "s3_secret_access_key": self.config.minio_root_password,
            "s3_bucket": DEFAULT_BUCKET,
            "s3_region": DEFAULT_REGION,
        }
