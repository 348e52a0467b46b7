"""Objects in a local directory: the old system kept images on the workers' filesystem, not in S3."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imgpipe.objects import ObjectStore, ObjectStoreError


class FileObjects(ObjectStore):
    """put/get by key under `root`; keys are imgpipe's own (`tasks/{task_id}/{stage}.{ext}`)."""

    def __init__(self, root: Path) -> None:  # no S3 client, so not ObjectStore.__init__
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"object key leaves the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a retried stage overwrites its artifact while another process may read it.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as exc:
            # As S3's NoSuchKey through the S3 store: the stage treats it as transient and retries.
            raise ObjectStoreError(f"get {key}: {exc}") from exc
