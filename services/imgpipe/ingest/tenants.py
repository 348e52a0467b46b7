"""Tenants and their API keys. Keys are random, shown once, and stored only as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.store.models import ApiKey, Tenant

API_KEY_PREFIX = "ipk_"


@dataclass(frozen=True)
class TenantLimits:
    tenant_id: str
    rate_per_second: float
    burst: int
    batch_rate_per_second: float
    batch_burst: int


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_tenant(
    session: Session,
    tenant_id: str,
    name: str,
    rate_per_second: float = 10.0,
    burst: int = 20,
    batch_rate_per_second: float = 1.0,
    batch_burst: int = 2,
) -> str:
    """Create (or update the limits of) a tenant and issue it a new API key, returned once."""
    tenant = session.get(Tenant, tenant_id) or Tenant(id=tenant_id)
    tenant.name = name
    tenant.rate_per_second = rate_per_second
    tenant.burst = burst
    tenant.batch_rate_per_second = batch_rate_per_second
    tenant.batch_burst = batch_burst
    session.add(tenant)
    session.flush()  # the key's foreign key needs the tenant row first
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(key_sha256=key_digest(api_key), tenant_id=tenant_id))
    return api_key


class ApiKeyAuthenticator:
    """Resolves an API key to its tenant's limits, caching answers (also misses) for a while."""

    def __init__(self, sessions: sessionmaker[Session], cache_seconds: float) -> None:
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TenantLimits | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, api_key: str) -> TenantLimits | None:
        digest = key_digest(api_key)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        limits = self._lookup(digest)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, limits)
        return limits

    def _lookup(self, digest: str) -> TenantLimits | None:
        with self._sessions() as session:
            tenant = session.scalars(
                select(Tenant)
                .join(ApiKey, ApiKey.tenant_id == Tenant.id)
                .where(ApiKey.key_sha256 == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
            if tenant is None:
                return None
            return TenantLimits(
                tenant.id,
                tenant.rate_per_second,
                tenant.burst,
                tenant.batch_rate_per_second,
                tenant.batch_burst,
            )
