"""The PostgreSQL schema, created and migrated forward by orchd itself.

The tables mirror the SQLite schema (``orchd.store.sqlite.schema``) column for column, so a
column added there is added here the same way, as a new entry of ``MIGRATIONS``. What only a
cluster needs is here too: the ``owner`` of each process (the node whose lease covers it), the
``nodes`` that are alive, and ``node_messages`` that carry a request to the node owning a
process. Several nodes may start at once: migrating holds an advisory lock, so one migrates and
the others find the work done; all of a migration is one transaction, so one that fails leaves the
database as it was.

Since version 7, what an operator may want to query is typed for SQL: State, a step's or a
branch's changes and a subscription's attributes are ``jsonb``, and every time is
``timestamptz`` (README "Scaling out"). The Python side still works in JSON bytes and Unix
seconds on both backends, through the codecs every connection registers (``codecs``). Three
columns stay ``bytea``: ``processes.form``, a suspended process's JSON Schema, whose order of
properties is the order its fields are asked in (jsonb would sort them by length);
``events.data``, the event stream's own encoding, written with every step and read back only
whole, by id (jsonb would parse each on the busiest insert and give nothing to query that the
process tables lack); and ``node_messages``' bodies, requests between nodes that live only until
answered. ``jsonb`` cannot hold the character U+0000, which SQLite stored: version 7 refuses
a database holding one, naming the process, and State takes none on either backend since
(``orchd.state.to_json_values``).
"""

from __future__ import annotations

import logging

import asyncpg

from orchd.errors import StoreError

log = logging.getLogger("orchd.store")

#: Advisory lock keys (any constants; they only need to differ from each other).
MIGRATE_LOCK = 0x6F72_6364_0001
#: Held by a transaction while it takes event ids and until it commits, so ids are committed
#: in the order they are given: a reader that saw id N never later meets a smaller new one.
EVENTS_LOCK = 0x6F72_6364_0002
#: Held by a transaction on the table of resource slots (README "Limits on shared resources") until
#: it commits: one
#: node at a time decides who holds a slot.
SLOTS_LOCK = 0x6F72_6364_0010

#: Schema version 7's columns: (table, its JSON columns, its time columns).
_RETYPED: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("processes", ("state",), ("next_retry_at", "created_at", "updated_at")),
    ("steps", ("delta",), ("started_at", "finished_at")),
    ("branches", ("changes",), ("next_retry_at",)),
    ("subscriptions", ("attributes",), ("created_at", "updated_at")),
    ("actions", (), ("at",)),
    ("subscription_actions", (), ("at",)),
    ("schedules", (), ("last_fire_at", "next_fire_at")),
    ("schedule_runs", (), ("fire_at",)),
    ("nodes", (), ("started_at", "heartbeat_at", "lease_until")),
    ("node_messages", (), ("created_at",)),
    ("resource_slots", (), ("since",)),
    ("resource_rates", (), ("next_at",)),
]
#: Each JSON column (as ``t``), with the SQL naming what a row of it belongs to, for the
#: refusal of a value jsonb cannot hold.
_JSON_COLUMNS = [
    ("processes AS t", "t.state", "format('process %s (its State)', t.id)"),
    (
        "steps AS t JOIN processes AS p ON p.rowid = t.process",
        "t.delta",
        "format('process %s (the changes of its step %s)', p.id, t.name)",
    ),
    (
        "branches AS t JOIN processes AS p ON p.rowid = t.process",
        "t.changes",
        "format('process %s (the changes of its branch %s)', p.id, t.path)",
    ),
    ("subscriptions AS t", "t.attributes", "format('subscription %s (its attributes)', t.id)"),
]
#: JSON text holding an escaped U+0000: a backslash not itself escaped, then ``u0000``.
_NUL_ESCAPE = r"(^|[^\\])(\\\\)*\\u0000"
#: The SQLSTATE of that refusal (class OR: orchd's own).
NUL_REFUSED = "OR007"


def _microseconds(seconds: str) -> str:
    """Unix seconds (a float column) as a timestamptz, rounded to the microsecond as Python's
    ``datetime.fromtimestamp`` (and ``codecs``) round: half to even, on the exact fraction.
    ``to_timestamp`` alone multiplies the whole time, whose rounding shows about one time in
    twenty a microsecond off what the API showed before the migration."""
    return (
        f"CASE WHEN {seconds} IN ('Infinity', '-Infinity') THEN to_timestamp({seconds}) "
        f"ELSE to_timestamp(floor({seconds})) + round(({seconds} - floor({seconds})) * 1e6) "
        "* interval '1 microsecond' END"
    )


def _refuse_nul(table: str, column: str, name: str) -> str:
    """A statement that raises, naming the first row whose ``column`` holds U+0000 (which
    ``jsonb`` refuses, though SQLite and ``bytea`` took it)."""
    return f"""DO $$ DECLARE found text; BEGIN
        SELECT {name} INTO found FROM {table}
            WHERE convert_from({column}, 'UTF8') ~ '{_NUL_ESCAPE}' LIMIT 1;
        IF found IS NOT NULL THEN
            RAISE EXCEPTION '% holds the character U+0000, which jsonb cannot store', found
                USING ERRCODE = '{NUL_REFUSED}';
        END IF; END $$"""


#: Forward migrations, keyed by the version each brings a database to (from the one before).
#: A new version is a new key here, and nothing else (``SCHEMA_VERSION`` follows).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE processes (
            rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            workflow TEXT NOT NULL,
            target TEXT NOT NULL,
            status TEXT NOT NULL,
            pc INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state BYTEA NOT NULL,
            reporter TEXT,
            subscription_id TEXT,
            current_step TEXT,
            error TEXT,
            form BYTEA,
            callback_token TEXT UNIQUE,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_retry_at DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            step_key TEXT,
            step_occurrence INTEGER,
            parent_id TEXT,
            child_group INTEGER,
            child_index INTEGER,
            held BOOLEAN NOT NULL DEFAULT false,
            children_group INTEGER,
            children_pending INTEGER,
            idempotency_key TEXT UNIQUE,
            owner TEXT
        )""",
        "CREATE INDEX processes_by_status ON processes (status)",
        "CREATE INDEX processes_by_workflow ON processes (workflow)",
        "CREATE INDEX processes_by_parent ON processes (parent_id, child_group, held, child_index)",
        "CREATE INDEX processes_by_age ON processes (status, updated_at)",
        "CREATE INDEX processes_by_reporter ON processes (reporter, rowid)",
        "CREATE INDEX processes_by_id_prefix ON processes (id text_pattern_ops)",
        # What a node takes over: active processes, by owner.
        """CREATE INDEX processes_active ON processes (owner)
            WHERE status IN ('created', 'running')""",
        """CREATE TABLE steps (
            process BIGINT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION NOT NULL,
            error TEXT,
            traceback TEXT,
            delta BYTEA,
            key TEXT,
            actor TEXT,
            reason TEXT,
            PRIMARY KEY (process, seq)
        )""",
        """CREATE TABLE subscriptions (
            rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            product TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            insync BOOLEAN NOT NULL,
            start_date TEXT,
            end_date TEXT,
            attributes BYTEA NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX subscriptions_by_customer ON subscriptions (customer_id)",
        "CREATE INDEX subscriptions_by_status ON subscriptions (status)",
        """CREATE TABLE subscription_processes (
            subscription_id TEXT NOT NULL,
            process_id TEXT NOT NULL,
            PRIMARY KEY (subscription_id, process_id)
        )""",
        "CREATE INDEX subscription_processes_by_process ON subscription_processes (process_id)",
        """CREATE TABLE schedules (
            name TEXT PRIMARY KEY,
            last_process_id TEXT,
            last_fire_at DOUBLE PRECISION,
            next_fire_at DOUBLE PRECISION,
            skipped INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE schedule_runs (
            name TEXT NOT NULL,
            fire_at DOUBLE PRECISION NOT NULL,
            process_id TEXT,
            PRIMARY KEY (name, fire_at)
        )""",
        """CREATE TABLE actions (
            rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            process BIGINT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX actions_by_process ON actions (process)",
        # Ids are never reused (a sequence), so SSE clients resume from them.
        """CREATE TABLE events (
            id BIGINT PRIMARY KEY,
            process_id TEXT NOT NULL,
            data BYTEA NOT NULL
        )""",
        "CREATE SEQUENCE events_id_seq AS BIGINT",
        # The cluster: each node's lease, renewed by its heartbeat (database clock, seconds).
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            incarnation TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION NOT NULL,
            takeovers BIGINT NOT NULL DEFAULT 0
        )""",
        # A request for a process another node owns, and that node's answer.
        """CREATE TABLE node_messages (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            to_node TEXT NOT NULL,
            from_node TEXT NOT NULL,
            process_id TEXT NOT NULL,
            body BYTEA NOT NULL,
            answer BYTEA,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX node_messages_by_node ON node_messages (to_node, id)",
    ],
    2: [
        # Parallel branches (README "Parallel branches"), as SQLite's schema version 6 has them.
        "ALTER TABLE steps ADD COLUMN branch TEXT",
        """CREATE TABLE branches (
            process BIGINT NOT NULL,
            path TEXT NOT NULL,
            status TEXT NOT NULL,
            step_key TEXT,
            step_occurrence INTEGER NOT NULL DEFAULT 0,
            changes BYTEA,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_retry_at DOUBLE PRECISION,
            callback_token TEXT,
            PRIMARY KEY (process, path)
        )""",
        "CREATE INDEX branches_by_token ON branches (callback_token) "
        "WHERE callback_token IS NOT NULL",
    ],
    3: [
        # Traces and products, as SQLite's schema version 7 has them.
        "ALTER TABLE processes ADD COLUMN trace_id TEXT",
        "ALTER TABLE subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE subscriptions ADD COLUMN note TEXT",
        "ALTER TABLE subscriptions ADD COLUMN search TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX subscriptions_by_product ON subscriptions (product, status)",
        """CREATE TABLE subscription_relations (
            subscription_id TEXT NOT NULL,
            path TEXT NOT NULL,
            depends_on TEXT NOT NULL,
            PRIMARY KEY (subscription_id, path)
        )""",
        "CREATE INDEX subscription_relations_by_target ON subscription_relations (depends_on)",
        """CREATE TABLE subscription_actions (
            rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            subscription_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX subscription_actions_by_subscription ON subscription_actions "
        "(subscription_id)",
    ],
    4: [
        # Limits on shared resources (README "Limits on shared resources"): each slot a step holds
        # or waits for, by
        # limit and key, with the node running it (a dead node's slots go with its lease); a
        # request's number is its place in each queue. And when each rated key's next start
        # may happen. SQLite needs neither: one node keeps its limits in memory.
        """CREATE TABLE resource_slots (
            request BIGINT NOT NULL,
            resource TEXT NOT NULL,
            key TEXT NOT NULL,
            held BOOLEAN NOT NULL DEFAULT false,
            process_id TEXT NOT NULL,
            step TEXT NOT NULL,
            node TEXT NOT NULL,
            incarnation TEXT NOT NULL,
            since DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (request, resource, key)
        )""",
        "CREATE INDEX resource_slots_by_key ON resource_slots (resource, key, request)",
        "CREATE INDEX resource_slots_by_node ON resource_slots (node, incarnation)",
        "CREATE INDEX resource_slots_waiting ON resource_slots (process_id) WHERE NOT held",
        "CREATE SEQUENCE resource_requests AS BIGINT",
        """CREATE TABLE resource_rates (
            resource TEXT NOT NULL,
            key TEXT NOT NULL,
            next_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (resource, key)
        )""",
    ],
    5: [
        # What input an Idempotency-Key started its process with, as SQLite's version 8.
        "ALTER TABLE processes ADD COLUMN idempotency_digest TEXT",
    ],
    6: [
        # As SQLite's schema version 9: an abort asked of a running process, committed.
        "ALTER TABLE processes ADD COLUMN abort_requested TEXT",
    ],
    7: [
        # JSON as jsonb and times as timestamptz, for operators' SQL (see the docstring). A
        # value jsonb cannot hold refuses the whole migration first, naming where it is.
        *(_refuse_nul(table, column, name) for table, column, name in _JSON_COLUMNS),
        *(
            f"ALTER TABLE {table} "
            + ", ".join(
                [f"ALTER COLUMN {c} TYPE jsonb USING convert_from({c}, 'UTF8')::jsonb" for c in js]
                + [f"ALTER COLUMN {c} TYPE timestamptz USING {_microseconds(c)}" for c in times]
            )
            for table, js, times in _RETYPED
        ),
    ],
}
#: The version this orchd writes: the newest migration's.
SCHEMA_VERSION = max(MIGRATIONS)
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database from a newer orchd."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS orchd_schema (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT version FROM orchd_schema")
        if version is None:
            await conn.execute("INSERT INTO orchd_schema (version) VALUES (0)")
            version = 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this orchd "
                f"({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                for statement in MIGRATIONS[target]:
                    await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                # The transaction rolls back: the database stays as it was, at ``version``.
                raise StoreError(
                    f"cannot migrate the database from schema version {version} to "
                    f"{SCHEMA_VERSION} (nothing was changed): {exc}"
                ) from None
            await conn.execute("UPDATE orchd_schema SET version = $1", target)
            log.info("migrated database schema to version %d", target)
    return SCHEMA_VERSION
