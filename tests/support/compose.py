"""The compose stack's file as Compose reads it: variable interpolation and `.env` files,
and the Kafka broker configuration its `apache/kafka` service builds from its environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO / "docker" / "compose.yaml"
ENV_EXAMPLE_PATH = REPO / "docker" / ".env.example"

_REF = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


@dataclass(frozen=True)
class Ref:
    """One `${NAME...}` reference in the compose file."""

    name: str
    op: str | None
    arg: str | None


def refs_in(value: Any) -> Iterator[Ref]:
    """Every variable reference in the strings of a loaded YAML document."""
    if isinstance(value, str):
        for found in _REF.finditer(value):
            name = found.group("name") or found.group("bare")
            if name:
                yield Ref(name, found.group("op"), found.group("arg"))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from refs_in(key)
            yield from refs_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs_in(item)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation over a loaded YAML document."""
    if isinstance(value, str):

        def substitute(found: re.Match[str]) -> str:
            if found.group(0) == "$$":
                return "$"
            name = found.group("name") or found.group("bare")
            op, arg, current = found.group("op"), found.group("arg") or "", env.get(name)
            if op in (":-", "-"):
                unset = current is None or (op == ":-" and current == "")
                return arg if unset else str(current)
            if op in (":?", "?"):
                if current is None or (op == ":?" and current == ""):
                    raise KeyError(f"{name}: {arg}")
                return current
            if op in (":+", "+"):
                return arg if current else ""
            return current or ""

        return _REF.sub(substitute, value)
    if isinstance(value, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    return value


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"not NAME=value: {line!r}"
        values[name] = value
    return values


# The apache/kafka image turns every KAFKA_* variable but these JVM and logging options
# into a server property: KAFKA_ dropped, `___` -> `-`, `__` -> `_`, `_` -> `.`, lower case.
KAFKA_NOT_PROPERTIES = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    }
)


def kafka_property_name(variable: str) -> str:
    """`KAFKA_LISTENER_SECURITY_PROTOCOL_MAP` -> `listener.security.protocol.map`."""
    name = variable.removeprefix("KAFKA_")
    name = re.sub(r"(?<!_)_(?!_)", ".", name)  # lone underscores first
    return name.replace("___", "-").replace("__", "_").lower()


def kafka_properties(environment: Mapping[str, Any]) -> dict[str, str]:
    """The server properties a broker container with `environment` runs with."""
    return {
        kafka_property_name(name): str(value)
        for name, value in environment.items()
        if name.startswith("KAFKA_") and name not in KAFKA_NOT_PROPERTIES
    }
