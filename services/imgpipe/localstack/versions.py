"""Pinned versions of the local stack's real servers. docs/local-stack.md explains each choice."""

from __future__ import annotations

KAFKA_VERSION = "3.9.2"  # also in kafka-pom.xml; a unit test keeps the two equal
# MinIO tags are not semver, so the Go module proxy serves it under a pseudo-version (commit 7aac2a2c).
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
POSTGRES_MAJOR = "15"  # Debian bookworm's postgresql-15; the exact patch release is whatever apt serves

# Images for the Docker backend (used only when a Docker engine is reachable). MinIO stopped publishing
# community images in autumn 2025; this is the last official one, older than the source build above.
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
POSTGRES_IMAGE = f"postgres:{POSTGRES_MAJOR}"
MINIO_IMAGE = "minio/minio:RELEASE.2025-09-07T16-13-09Z"
