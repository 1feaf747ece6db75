"""Database errors classified in one place (after QuantumLeap's ErrorAnalyzer).

    transient  the database or the link to it failed; the same write will
               succeed later: retry with backoff, pause consumption.
    permanent  the data is wrong; retrying cannot help: isolate the record
               (bisect the batch) and dead-letter it with the reason.
    fatal      the schema or the configuration is wrong (missing table,
               permission): every record would fail, so stop loudly instead
               of dead-lettering the whole stream.

Classification is by SQLSTATE class first (asyncpg exposes `sqlstate`), then
by Python type for errors raised before the server answered.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import asyncpg
from asyncpg.exceptions._base import DataError as _ClientDataError
from asyncpg.exceptions._base import InternalClientError as _InternalClientError

from citybrain.errors import ConfigError, PermanentError, ServiceError, TransientError

Kind = Literal["transient", "permanent", "fatal"]

# SQLSTATE classes (first two characters) and their meaning for a writer.
_TRANSIENT_CLASSES = {
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources: too many connections, disk full, out of memory
    "57",  # operator intervention: admin/crash shutdown, cannot connect now, query canceled
    "58",  # system error (I/O)
    "55",  # object not in prerequisite state: lock not available
    "HV",  # foreign data wrapper errors (remote side)
}
_PERMANENT_CLASSES = {
    "22",  # data exception: bad encoding, out of range, invalid text representation
    "23",  # integrity constraint violation (not the ON CONFLICT target)
}
_FATAL_CLASSES = {
    "42",  # syntax error or access rule violation: undefined table/column, privilege
    "3F",  # invalid schema name
    "28",  # invalid authorization
    "0A",  # feature not supported
}
# Specific codes whose class would mislead.
_TRANSIENT_CODES = {"23514"}  # no partition for a row: partitions dropped meanwhile; re-ensure and retry
_REASONS = {
    "22021": "bad_encoding",
    "22P05": "bad_encoding",
    "22003": "out_of_range",
    "22008": "out_of_range",
    "22P02": "invalid_value",
    "23502": "missing_value",
    "22001": "too_long",
}


def sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def classify(exc: BaseException) -> Kind:
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, ConfigError):
        return "fatal"
    code = sqlstate(exc)
    if code is not None:
        if code in _TRANSIENT_CODES:
            # 23514 is also a CHECK constraint; only "no partition of relation" is transient
            return "transient" if "no partition of relation" in str(exc) else "permanent"
        cls = code[:2]
        if cls in _TRANSIENT_CLASSES:
            return "transient"
        if cls in _PERMANENT_CLASSES:
            return "permanent"
        if cls in _FATAL_CLASSES:
            return "fatal"
        return "fatal"
    if isinstance(exc, _ClientDataError):
        # asyncpg's client-side encoder refused one value (wrong type, too big)
        return "permanent"
    if isinstance(exc, _InternalClientError):
        # the protocol state broke (typically a connection killed mid-COPY): reconnect and retry
        return "transient"
    if isinstance(exc, asyncpg.exceptions.OutdatedSchemaCacheError):
        return "transient"
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "another operation is in progress" after a drop
        return "transient"
    if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError, EOFError)):
        return "transient"
    if isinstance(exc, (UnicodeEncodeError, ValueError, TypeError, OverflowError)):
        # raised by asyncpg's client-side encoders for one bad value
        return "permanent"
    return "fatal"


def reason(exc: BaseException) -> str:
    """A short reason class for DLQ headers and metric labels."""
    code = sqlstate(exc)
    if code is not None:
        return _REASONS.get(code, f"db_{code}")
    return f"db_{type(exc).__name__}"


def wrap(exc: BaseException) -> ServiceError | ConfigError:
    """The project exception for a database error (cause attached)."""
    kind = classify(exc)
    msg = f"{type(exc).__name__}: {exc}"
    err: ServiceError | ConfigError
    if kind == "transient":
        err = TransientError(msg)
    elif kind == "permanent":
        err = PermanentError(msg)
    else:
        err = ConfigError(f"storage cannot write ({msg}); check the schema (`citybrain db migrate`) and grants")
    err.__cause__ = exc
    return err
