"""Object storage (S3-compatible, through boto3): deterministic keys per task and stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imgpipe.runtime.errors import TransientError
from imgpipe.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def artifact_key(task_id: str, stage: str, extension: str) -> str:
    """`tasks/{task_id}/{stage}.{ext}`: the same key on every retry, so a redone stage overwrites."""
    return f"tasks/{task_id}/{stage}.{extension}"


class ObjectStoreError(TransientError):
    """The object store failed or was unreachable; the work may succeed later."""


class ObjectStore:
    def __init__(self, settings: RuntimeSettings, presign_endpoint_url: str | None = None) -> None:
        self.bucket = settings.s3_bucket
        secret = settings.s3_secret_access_key
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            # One client serves every message a process has in flight (a stage's 16 model calls, the
            # API's threads); at botocore's default of 10 the rest reconnect for each request.
            max_pool_connections=64,
        )
        secret_value = secret.get_secret_value() if secret else None

        def client(endpoint_url: str | None) -> S3Client:
            return boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=secret_value,
                config=config,
            )

        self._client = client(settings.s3_endpoint_url)
        # Presigned URLs must name the host clients reach, which may differ from the in-cluster one.
        self._presigner = client(presign_endpoint_url or settings.s3_endpoint_url)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"put {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"get {key}: {exc}") from exc

    def presigned_get_url(self, key: str, expires_seconds: int = 3600) -> str:
        return self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
        )

    def is_reachable(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True
