"""Where the ClickHouse store is and how to open it: URL -> target -> client -> schema.

One code path serves a ClickHouse server (`http(s)://user:password@host:port/database`) and
an embedded chDB store (`chdb:///abs/path`): both are clickhouse-connect clients.

chDB runs the engine inside the process and allows one store path per process at a time:
opening a second path while any client on the first is open raises, and a store that one
process has open cannot be opened by another. Closing every client releases the engine,
after which the same process may open a different path.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client

from waxhouse.errors import SettingsError, SinkError

logger = logging.getLogger(__name__)

Scheme = Literal["http", "https", "chdb"]

DEFAULT_PORTS: dict[str, int] = {"http": 8123, "https": 8443}
SCHEMA_PACKAGE = "waxhouse.connectors.sql"


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed `CLICKHOUSE_URL`. `path` is set for chDB stores, the rest for servers."""

    scheme: Scheme
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    database: str = "default"
    path: str = ""

    def __post_init__(self) -> None:
        if self.scheme == "chdb":
            if not self.path.startswith("/"):
                raise SettingsError(f"CLICKHOUSE_URL must be chdb:///absolute/path, got {self}")
        elif not self.host:
            raise SettingsError(f"CLICKHOUSE_URL needs a host: {self}")
        elif not 0 < self.port < 65536:
            raise SettingsError(f"CLICKHOUSE_URL has an invalid port: {self}")

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"

    def masked(self) -> str:
        """The URL with the password replaced by `***`: safe to log and print."""
        if self.embedded:
            return f"chdb://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        secret = ":***" if self.password else ""
        return f"{self.scheme}://{self.username}{secret}@{host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.masked()


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """Parse `http(s)://user:password@host:port/database` or `chdb:///abs/path`.

    Username, password and database may be percent-encoded. Ports default to 8123 (http)
    and 8443 (https), the user to `default`, the database to `default`.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise SettingsError("CLICKHOUSE_URL takes no query string or fragment")
    if parts.scheme == "chdb":
        if parts.netloc:
            raise SettingsError("CLICKHOUSE_URL must be chdb:///absolute/path (three slashes)")
        return ClickHouseTarget(scheme="chdb", path=parts.path)
    if parts.scheme not in DEFAULT_PORTS:
        raise SettingsError("CLICKHOUSE_URL must start with http://, https:// or chdb://")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as e:
        raise SettingsError("CLICKHOUSE_URL has an invalid port") from e
    database = unquote(parts.path.strip("/")) or "default"
    if "/" in database:
        raise SettingsError("CLICKHOUSE_URL names more than one path segment as the database")
    return ClickHouseTarget(
        scheme="https" if parts.scheme == "https" else "http",
        host=parts.hostname or "",
        port=port,
        username=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        database=database,
    )


def open_client(target: ClickHouseTarget, cluster: str | None = None) -> Client:
    """A client on `target`; for a server, its database is created first if missing.

    With `cluster`, the database is created `ON CLUSTER` (on every node of that cluster).
    Datetimes come back timezone-aware (UTC) from either backend.
    """
    if target.embedded:
        if cluster is not None:
            raise SettingsError("an embedded chDB store has no cluster: drop --cluster")
        return clickhouse_connect.get_client(dsn=f"chdb://{target.path}", tz_mode="aware")
    _create_database(target, cluster)
    return _server_client(target, database=target.database)


def _server_client(target: ClickHouseTarget, database: str | None) -> Client:
    return clickhouse_connect.get_client(
        interface=target.scheme,
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        database=database,
        tz_mode="aware",
        # One writer per client and no temporary tables: sessions only add locking.
        autogenerate_session_id=False,
    )


def _create_database(target: ClickHouseTarget, cluster: str | None) -> None:
    admin = _server_client(target, database=None)
    try:
        exists = admin.query(
            "SELECT 1 FROM system.databases WHERE name = {name:String}",
            parameters={"name": target.database},
        ).result_rows
        if not exists or cluster is not None:  # on a cluster: other nodes may lack it
            logger.info("Creating ClickHouse database %s", target.database)
            # Quoted here, not bound: a server forwards ON CLUSTER DDL to the other nodes
            # as text, without the query's parameters.
            name = quote_identifier(target.database)
            admin.command(f"CREATE DATABASE IF NOT EXISTS {name}{_on_cluster(cluster)}")
    finally:
        admin.close()


def _on_cluster(cluster: str | None) -> str:
    return "" if cluster is None else f" ON CLUSTER {quote_identifier(cluster)}"


Statements = Sequence[tuple[str, str]]


def schema_statements(tables: Statements, cluster: str | None = None) -> list[tuple[str, str]]:
    """The DDL a pipeline applies, as `(name, statement)` in order: its tables' and views'
    (`tables`, derived from its declaration), then the dead letters' (`connectors/sql`).

    With `cluster`, each statement is its replicated variant (`replicated_statement`).
    """
    files = [f for f in resources.files(SCHEMA_PACKAGE).iterdir() if f.name.endswith(".sql")]
    statements = [*tables] + [
        (f.name, f.read_text(encoding="utf-8")) for f in sorted(files, key=lambda f: f.name)
    ]
    if cluster is None:
        return statements
    return [(name, replicated_statement(sql, cluster)) for name, sql in statements]


# `CREATE TABLE IF NOT EXISTS name` / `CREATE OR REPLACE VIEW name`: the name's end is where
# `ON CLUSTER` goes. `ENGINE = XMergeTree` becomes `ENGINE = ReplicatedXMergeTree`.
_CREATE = re.compile(r"^(CREATE (?:TABLE IF NOT EXISTS|OR REPLACE VIEW) \w+)", re.MULTILINE)
_ENGINE = re.compile(r"\bENGINE = (\w*MergeTree)\b")


def replicated_statement(statement: str, cluster: str) -> str:
    """`statement` for a replicated ClickHouse cluster: `ON CLUSTER cluster`, and each
    `*MergeTree` engine as its `Replicated*MergeTree` twin.

    The replicated engines take no path arguments: the server's `default_replica_path`
    (`/clickhouse/tables/{uuid}/{shard}`) and `default_replica_name` (`{replica}`) apply,
    so every replica of a shard shares one Keeper path per table. Views are created on every
    node. Rows keep their identity and `version`, so replicas deduplicate replays exactly as
    a single server does.
    """
    end = _created(statement).end()
    statement = statement[:end] + _on_cluster(cluster) + statement[end:]
    return _ENGINE.sub(r"ENGINE = Replicated\1", statement)


def schema_objects(tables: Statements) -> list[str]:
    """The names of the tables and views the schema creates, in creation order."""
    return [
        _created(statement).group(1).rsplit(" ", 1)[1] for _, statement in schema_statements(tables)
    ]


def _created(statement: str) -> re.Match[str]:
    """Where `statement` says what it creates; ValueError if it is not one of ours."""
    found = _CREATE.search(statement)
    if found is None:
        raise ValueError(f"not a CREATE TABLE IF NOT EXISTS / CREATE OR REPLACE VIEW: {statement}")
    return found


def ensure_schema(client: Client, tables: Statements, cluster: str | None = None) -> None:
    """Create the tables and views if missing (and bring the views up to date). Idempotent.

    With `cluster`, the replicated variant is applied `ON CLUSTER cluster`.
    """
    for name, statement in schema_statements(tables, cluster):
        logger.debug("Applying %s", name)
        client.command(statement)


def missing_schema_objects(client: Client, tables: Statements) -> list[str]:
    """The schema's tables and views that the client's database lacks."""
    present = {
        row[0]
        for row in client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
        ).result_rows
    }
    return [name for name in schema_objects(tables) if name not in present]


def wait_for_schema(
    client: Client,
    tables: Statements,
    timeout_seconds: float,
    *,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once every table and view of the schema exists; `SinkError` after
    `timeout_seconds` without them. For deployments where a separate step (`waxhouse
    schema`, a Kubernetes Job) owns the DDL and the flow must not create tables itself.
    """
    started = clock()
    while missing := missing_schema_objects(client, tables):
        if clock() - started >= timeout_seconds:
            raise SinkError(
                f"ClickHouse lacks {', '.join(missing)} after {timeout_seconds:g} s: apply "
                "the schema with `waxhouse schema` (CLICKHOUSE_CREATE_SCHEMA=false)"
            )
        logger.warning(
            "Waiting for the schema (missing: %s); it is applied by `waxhouse schema`",
            ", ".join(missing),
        )
        sleep(poll_seconds)
