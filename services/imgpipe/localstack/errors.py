"""The failure every local stack operation reports as one readable line (CLI: `error: ...`, exit 1)."""

from __future__ import annotations


class LocalStackError(RuntimeError):
    """A server cannot be installed, started or stopped; the message says which and what to do."""
