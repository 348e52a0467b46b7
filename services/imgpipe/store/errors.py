"""Which task-store errors are the request's fault (permanent) and which the database's (transient).

The HTTP API answers a permanent one with 422 and a transient one with 503; the submit consumer
dead-letters a permanent one at once (recording a failed task) and retries a transient one through
the tiers. Classes are by SQLSTATE class (the first two characters), decided one by one below; an
error with no SQLSTATE is the driver's own: a value it cannot send (permanent) or a lost connection
(transient).
"""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import StatementError

# SQLSTATE classes caused by the values a request carries: retrying the same values fails the same way.
PERMANENT_CLASSES = {
    "22": "data exception",  # text Postgres cannot hold (U+0000 in jsonb: 22P05), a value too long
    "23": "integrity constraint violation",  # e.g. the tenant was deleted while its task was written
    "54": "program limit exceeded",  # a value too large to index
}
# SQLSTATE classes caused by the database's state: the same request may succeed later.
TRANSIENT_CLASSES = {
    "08": "connection exception",
    "25": "invalid transaction state",  # e.g. a read-only transaction on a demoted primary
    "40": "transaction rollback",  # serialization failure, deadlock
    "42": "syntax error or access rule violation",  # a schema not migrated yet: the deployment's fault
    "53": "insufficient resources",  # disk full, too many connections
    "55": "object not in prerequisite state",  # lock not available
    "57": "operator intervention",  # admin shutdown, statement canceled
    "58": "system error",
    "XX": "internal error",
}


def is_permanent(exc: BaseException) -> bool:
    """True when the same request would fail the same way again (see the module docstring)."""
    cause = exc.orig if isinstance(exc, StatementError) else exc
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in PERMANENT_CLASSES
    # Raised by psycopg before anything reached the server: a value it cannot encode (a lone
    # surrogate, U+0000 in text) is the request's fault; a failed connect or lost socket is not.
    return isinstance(cause, psycopg.DataError | UnicodeEncodeError)


def describe(exc: BaseException) -> str:
    """A short reason naming the SQLSTATE class, without the statement or its parameters."""
    cause = exc.orig if isinstance(exc, StatementError) else exc
    sqlstate = getattr(cause, "sqlstate", None) or ""
    kind = PERMANENT_CLASSES.get(sqlstate[:2]) or TRANSIENT_CLASSES.get(sqlstate[:2]) or type(cause).__name__
    return f"{kind} ({sqlstate})" if sqlstate else kind
