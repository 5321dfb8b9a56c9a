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
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from waxhouse.errors import SettingsError

logger = logging.getLogger(__name__)

Scheme = Literal["http", "https", "chdb"]

DEFAULT_PORTS: dict[str, int] = {"http": 8123, "https": 8443}
SCHEMA_PACKAGE = "connectors.sql"


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


def open_client(target: ClickHouseTarget) -> Client:
    """A client on `target`; for a server, its database is created first if missing.

    Datetimes come back timezone-aware (UTC) from either backend.
    """
    if target.embedded:
        return clickhouse_connect.get_client(dsn=f"chdb://{target.path}", tz_mode="aware")
    _create_database(target)
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


def _create_database(target: ClickHouseTarget) -> None:
    admin = _server_client(target, database=None)
    try:
        exists = admin.query(
            "SELECT 1 FROM system.databases WHERE name = {name:String}",
            parameters={"name": target.database},
        ).result_rows
        if not exists:
            logger.info("Creating ClickHouse database %s", target.database)
            admin.command(
                "CREATE DATABASE IF NOT EXISTS {name:Identifier}",
                parameters={"name": target.database},
            )
    finally:
        admin.close()


def schema_statements() -> list[tuple[str, str]]:
    """The DDL files of `connectors/sql`, as `(file name, statement)` in name order."""
    files = [f for f in resources.files(SCHEMA_PACKAGE).iterdir() if f.name.endswith(".sql")]
    return [(f.name, f.read_text(encoding="utf-8")) for f in sorted(files, key=lambda f: f.name)]


def ensure_schema(client: Client) -> None:
    """Create the tables and views if missing (and bring the views up to date). Idempotent."""
    for name, statement in schema_statements():
        logger.debug("Applying %s", name)
        client.command(statement)
