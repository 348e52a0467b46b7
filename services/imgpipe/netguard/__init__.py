"""SSRF-guarded outbound HTTP: image fetches (sync) and webhooks (async). See docs/egress.md."""

from imgpipe.netguard.client import AsyncGuardedClient, Fetched, GuardedClient, fetch
from imgpipe.netguard.errors import EgressRefused, FetchFailed, ResponseTooLarge
from imgpipe.netguard.policy import METADATA_ADDRESSES, EgressPolicy, parse_networks, parse_ports
from imgpipe.netguard.transport import AsyncGuardedTransport, GuardedTransport

__all__ = [
    "METADATA_ADDRESSES",
    "AsyncGuardedClient",
    "AsyncGuardedTransport",
    "EgressPolicy",
    "EgressRefused",
    "FetchFailed",
    "Fetched",
    "GuardedClient",
    "GuardedTransport",
    "ResponseTooLarge",
    "fetch",
    "parse_networks",
    "parse_ports",
]
