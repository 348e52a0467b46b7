"""An object store in a dict, for running stage work without S3 (unit tests, the README's pictures)."""

from __future__ import annotations

from imgpipe.objects import ObjectStore


class DictObjects(ObjectStore):
    def __init__(self) -> None:  # no client: nothing here talks to S3
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.objects[key]
