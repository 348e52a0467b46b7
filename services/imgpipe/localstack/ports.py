"""Free loopback TCP ports for the local servers, kept stable across warm restarts."""

from __future__ import annotations

import socket
from collections.abc import Collection, Mapping
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def _bind(sock: socket.socket, port: int) -> bool:
    # SO_REUSEADDR like the servers themselves: a port whose old connections sit in TIME_WAIT after a
    # `down` is still usable, so a warm `up` keeps its ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        return False
    return True


def is_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return _bind(sock, port)


def is_port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there (a cheap pre-check before protocol probes)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def assign_ports(
    names: Collection[str], remembered: Mapping[str, int], keep: Collection[str] = ()
) -> dict[str, int]:
    """One distinct free port per name, reusing the remembered port when it is still free.

    Names in `keep` keep their remembered port unchecked: their server is running and holds it.
    New ports come from the kernel (bind to port 0); all probe sockets stay open until every port is
    chosen, so two names never get the same port.
    """
    chosen: dict[str, int] = {}
    with ExitStack() as probes:
        for name in names:
            old = remembered.get(name)
            if old is not None and name in keep:
                chosen[name] = old
                continue
            sock = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            if old is not None and old not in chosen.values() and _bind(sock, old):
                chosen[name] = old
                continue
            if not _bind(sock, 0):
                raise OSError(f"could not bind a free port on {LOOPBACK}")
            chosen[name] = sock.getsockname()[1]
    return chosen
