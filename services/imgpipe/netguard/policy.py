"""What outbound HTTP may reach: `EgressPolicy` and the address check.

An address is allowed when it is publicly routable, or when it lies in one of `allow_networks`.
Cloud metadata endpoints are refused even inside an allow-listed range; only an allow-list entry for
exactly that address (a /32 or /128) lets one through.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean instance metadata
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # EKS Pod Identity agent
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
    )
)

DEFAULT_MAX_BYTES: Final = 20 * 1024 * 1024  # the same cap as imgpipe.imaging.validate
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_TOTAL_TIMEOUT: Final = 30.0
DEFAULT_MAX_REDIRECTS: Final = 3


@dataclass(frozen=True)
class EgressPolicy:
    """Limits of one kind of outbound call (image fetches, webhooks). Times are in seconds."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")
    allowed_ports: tuple[int, ...] | None = None  # None: any port
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT

    def __post_init__(self) -> None:
        if not set(self.allowed_schemes) <= {"http", "https"}:
            raise ValueError(f"allowed_schemes may only hold http and https, got {self.allowed_schemes}")
        if self.max_redirects < 0 or self.max_bytes <= 0:
            raise ValueError("max_redirects must be >= 0 and max_bytes > 0")
        if self.connect_timeout <= 0 or self.total_timeout <= 0:
            raise ValueError("connect_timeout and total_timeout must be > 0")

    @classmethod
    def from_settings(
        cls,
        *,
        allow_networks: str = "",
        allowed_ports: str = "",
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    ) -> EgressPolicy:
        """Build from setting strings: `allow_networks="10.1.0.0/16,127.0.0.1/32"`, `allowed_ports="443"`."""
        return cls(
            allow_networks=parse_networks(allow_networks),
            allowed_ports=parse_ports(allowed_ports),
            max_redirects=max_redirects,
            max_bytes=max_bytes,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
        )

    def address_allowed(self, address: IPAddress) -> bool:
        """Whether a connection to `address` is allowed (IPv4-mapped IPv6 is judged as its IPv4)."""
        address = unmap(address)
        if address in METADATA_ADDRESSES:
            return any(net.prefixlen == net.max_prefixlen and address in net for net in self.allow_networks)
        return any(address in net for net in self.allow_networks) or is_public(address)


def unmap(address: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` is the IPv4 address a.b.c.d; everything else is itself."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Publicly routable unicast. `is_global` alone misses multicast, reserved and site-local ranges."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False  # 6to4 wrapping a private IPv4 address
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated networks; a bare address means just that address. Host bits must be zero."""
    networks = []
    for item in _items(text):
        try:
            networks.append(ip_network(item))
        except ValueError as exc:
            raise ValueError(f"bad network in allow list: {item!r} ({exc})") from None
    return tuple(networks)


def parse_ports(text: str) -> tuple[int, ...] | None:
    """Comma-separated ports; empty means any port."""
    items = _items(text)
    if not items:
        return None
    ports = []
    for item in items:
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise ValueError(f"bad port in allowed ports: {item!r}")
        ports.append(int(item))
    return tuple(ports)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
