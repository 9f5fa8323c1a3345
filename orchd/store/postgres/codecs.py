"""How orchd's values cross the wire to PostgreSQL's ``jsonb`` and ``timestamptz`` columns.

The store works in JSON bytes (State, a step's changes, a subscription's attributes, as msgspec
encodes them) and in float seconds since the Unix epoch, on both backends: the plans and reads
are written once (``orchd.store.plans``, ``orchd.store.sqlreads``). PostgreSQL keeps them as
``jsonb`` and ``timestamptz`` (schema version 7), so an operator can query them with SQL. The
codecs registered here on every connection the store opens translate without Python work worth
the name: ``jsonb``'s binary form is a version byte (1) and the JSON text, and
``timestamptz``'s is a count of microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import asyncpg

#: 2000-01-01T00:00:00Z in Unix microseconds: where PostgreSQL counts its timestamps from.
_PG_EPOCH_MICROS = 946_684_800 * 1_000_000
#: ``jsonb``'s binary format version (the only one PostgreSQL has).
_JSONB_VERSION = b"\x01"
#: PostgreSQL's ``infinity`` and ``-infinity`` timestamps, in its microseconds.
_INFINITY = 2**63 - 1
_MINUS_INFINITY = -(2**63)


#: JSON text (bytes, as the store encodes it) as ``jsonb``'s binary form, and back: C methods,
#: so no Python frame runs for each value of a batch.
_jsonb_in = _JSONB_VERSION.__add__
_jsonb_out = operator.itemgetter(slice(1, None))


def _time_in(at: float) -> tuple[int]:
    """Unix seconds as PostgreSQL's microseconds: a time is kept to the microsecond, so one
    read back may differ from the float written by less than that."""
    try:
        whole = int(at)
    except OverflowError:  # an infinity (NaN: ValueError, refused)
        return (_INFINITY if at > 0 else _MINUS_INFINITY,)
    # Rounded as ``datetime.fromtimestamp`` rounds (half to even, on the exact fraction: a
    # float's fraction of a second times a million is exact; a whole second's microseconds are
    # even, so adding them keeps the rounding), so the API shows the same microsecond for a
    # time written and for it read back.
    return (whole * 1_000_000 - _PG_EPOCH_MICROS + round((at - whole) * 1_000_000),)


def _time_out(value: tuple[int]) -> float:
    """PostgreSQL's microseconds as Unix seconds."""
    (micros,) = value
    if micros == _INFINITY:
        return math.inf
    if micros == _MINUS_INFINITY:
        return -math.inf
    # One division of integers, which Python rounds correctly: a time that is a whole number
    # of microseconds comes back as the very float it was written as.
    return (micros + _PG_EPOCH_MICROS) / 1_000_000


async def register(conn: Any) -> None:
    """Set the codecs on ``conn`` (a pool's ``init``, or a connection of its own)."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_in, decoder=_jsonb_out, format="binary"
    )
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_time_in, decoder=_time_out, format="tuple"
    )


async def connect(url: str, **options: Any) -> asyncpg.Connection:
    """A connection to ``url`` with the codecs set."""
    conn: asyncpg.Connection = await asyncpg.connect(url, **options)
    try:
        await register(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn
