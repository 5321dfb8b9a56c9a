"""The `waxhouse` command: query the configured ClickHouse store, apply its schema.

    waxhouse sql "SELECT page, sum(views) FROM page_stats GROUP BY page"
    waxhouse sql --format json "SELECT * FROM dead_letters WHERE reason = {r:String}" -p r=late
    waxhouse schema                                    # the tables of dataflows.clickstream
    waxhouse schema --pipeline dataflows.orders        # another pipeline's (MODULE[:NAME])
    waxhouse schema --replicated --cluster analytics   # Replicated*MergeTree, ON CLUSTER
    waxhouse schema --print [--replicated --cluster analytics]   # show the DDL only
    waxhouse produce --rate 500                        # generated events into Kafka
    waxhouse gateway                                   # HTTP/WebSocket into Kafka (docs/gateway.md)
    waxhouse serve                                     # live tables over HTTP/SSE (docs/serving.md)
    waxhouse autoscale --local dataflows.clickstream --recovery-directory data/recovery
    waxhouse autoscale --dry-run --metrics http://127.0.0.1:3030/metrics   # recommend only

`schema` imports the pipeline's module from the current directory (as `python -m
bytewax.run` does) and applies the DDL its tables derive, plus the dead letters' table.
The store is `CLICKHOUSE_URL` (default: the embedded chDB store at ./data/clickhouse). An
embedded store can be open in one process at a time: stop a running flow before querying
its store from here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from clickhouse_connect.driver.exceptions import ClickHouseError
from kafka.errors import KafkaError
from prometheus_client import start_http_server

from waxhouse.autoscale.kubernetes import Target, connect
from waxhouse.autoscale.local import LocalCluster
from waxhouse.autoscale.model import Controller, Policy
from waxhouse.autoscale.run import Autoscaler
from waxhouse.connectors.clickhouse_store import (
    ClickHouseTarget,
    ensure_schema,
    open_client,
    parse_clickhouse_url,
    schema_statements,
)
from waxhouse.connectors.loadgen import LoadConfig, LoadGenerator
from waxhouse.errors import SettingsError, SourceError, WaxhouseError
from waxhouse.logs import configure_logging
from waxhouse.pipeline import Pipeline
from waxhouse.settings import Settings, load_settings, mask_url

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_CONFIG = 2
DEFAULT_PIPELINE = "dataflows.clickstream"


def format_value(value: Any) -> str:
    """One cell as text: datetimes in ISO form with milliseconds, NULL for None."""
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table (numbers right-aligned) followed by the row count."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for line in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(columns))]

    def fmt(line: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(line, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [fmt(columns), "-+-".join("-" * w for w in widths)] if columns else []
    out.extend(fmt(line) for line in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: "19.99", not a binary float
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def render_json_lines(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """One JSON object per row; decimals as strings, datetimes in ISO form."""
    return "\n".join(
        json.dumps(dict(zip(columns, row, strict=True)), default=_json_default, ensure_ascii=False)
        for row in rows
    )


def _parameters(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SettingsError(f"--param must look like NAME=VALUE, got {pair!r}")
        params[name] = value
    return params


def run_sql(
    target: ClickHouseTarget, sql: str, params: dict[str, str], fmt: str, out: TextIO
) -> None:
    client = open_client(target)
    try:
        result = client.query(sql, parameters=params or None)
        columns, rows = list(result.column_names), result.result_rows
    finally:
        client.close()
    text = render_json_lines(columns, rows) if fmt == "json" else render_table(columns, rows)
    if text:
        print(text, file=out)


def load_pipeline(spec: str) -> Pipeline:
    """The `Pipeline` named by `MODULE[:NAME]` (NAME defaults to `pipeline`), imported with
    the current directory first on the path."""
    module_name, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SettingsError(f"--pipeline {spec}: cannot import {module_name}: {e}") from None
    name = name or "pipeline"
    pipeline = getattr(module, name, None)
    if not isinstance(pipeline, Pipeline):
        raise SettingsError(f"--pipeline {spec}: {module_name} has no Pipeline named {name!r}")
    return pipeline


def pipeline_statements(spec: str) -> list[tuple[str, str]]:
    return load_pipeline(spec).compile().statements()


def run_schema(
    target: ClickHouseTarget, tables: Sequence[tuple[str, str]], cluster: str | None, out: TextIO
) -> None:
    """Apply the schema (the replicated variant `ON CLUSTER cluster` if given) and say so."""
    client = open_client(target, cluster)
    try:
        ensure_schema(client, tables, cluster)
    finally:
        client.close()
    where = f"{target}" if cluster is None else f"{target} (replicated, ON CLUSTER {cluster})"
    print(f"Schema is up to date at {where}", file=out)


def print_schema(tables: Sequence[tuple[str, str]], cluster: str | None, out: TextIO) -> None:
    """The DDL `run_schema` applies, one statement per object, without connecting."""
    for name, statement in schema_statements(tables, cluster):
        print(f"-- {name}\n{statement.strip()};\n", file=out)


def run_produce(settings: Settings, args: argparse.Namespace) -> None:
    """Produce generated events into KAFKA_TOPIC (the sensors flow's: readings into
    SENSORS_TOPIC, the registry into DEVICES_TOPIC) until done or SIGTERM/SIGINT."""
    if settings.kafka_bootstrap_servers is None:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set: produce writes to Kafka")
    try:
        config = LoadConfig(
            rate=args.rate,
            events=args.events,
            seed=time.time_ns() // 1_000_000 if args.seed is None else args.seed,
            malformed_ratio=args.malformed_ratio,
            flow=args.flow,
        )
    except ValueError as e:
        raise SettingsError(f"produce: {e}") from e
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sensors = config.flow == "sensors"
    topic = settings.sensors_topic if sensors else settings.kafka_topic
    logger.info(
        "producing into %s at %s events/s (seed %d)",
        topic,
        f"{config.rate:g}" if config.rate else "unlimited",
        config.seed,
    )
    generator = LoadGenerator(
        settings.kafka_bootstrap_servers,
        topic,
        config,
        client_options=settings.kafka_security.client_options(),
        reference_topic=settings.devices_topic if sensors else None,
    )
    try:
        generator.run(stop)
    except KafkaError as e:
        raise SourceError(f"producing into {topic} failed: {e!r}") from e


GATEWAY_FLOWS = {
    # --flow: (path, pipeline module, the settings' topic for it)
    "clickstream": ("/v1/events", "dataflows.clickstream", "kafka_topic"),
    "sensors": ("/v1/readings", "dataflows.sensors", "sensors_topic"),
}


def gateway_routes(settings: Settings, flow: str, specs: Sequence[str]) -> list[Any]:
    """The routes `--flow` and `--route` name: each flow's pipeline from its module (as
    `python -m bytewax.run` imports it), then each `PATH=MODULE[:NAME]@TOPIC`."""
    from waxhouse.gateway.routes import Route, parse_route_spec

    routes = []
    for name in GATEWAY_FLOWS if flow == "all" else () if flow == "none" else (flow,):
        path, module, topic_setting = GATEWAY_FLOWS[name]
        pipeline = load_pipeline(module)
        routes.append(Route(path, pipeline.schema, pipeline.key, getattr(settings, topic_setting)))
    for spec in specs:
        parsed = parse_route_spec(spec)
        pipeline = load_pipeline(parsed.pipeline)
        routes.append(Route(parsed.path, pipeline.schema, pipeline.key, parsed.topic))
    paths = [route.path for route in routes]
    if not routes:
        raise SettingsError("gateway: no routes (--flow none needs at least one --route)")
    if len(set(paths)) != len(paths):
        raise SettingsError(f"gateway: a path is served twice: {paths}")
    return routes


def run_gateway(settings: Settings, args: argparse.Namespace) -> None:
    """Serve the gateway until SIGTERM/SIGINT (see waxhouse.gateway)."""
    if settings.kafka_bootstrap_servers is None:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set: the gateway writes to Kafka")
    try:
        from waxhouse.gateway.producer import GatewayProducer
        from waxhouse.gateway.server import Gateway
    except ImportError as e:
        raise SettingsError(
            "the gateway needs the gateway extra"
            f" (from the repository: pip install -e '.[gateway]'): {e}"
        ) from None
    routes = gateway_routes(settings, args.flow, args.route)
    config = settings.gateway
    logger.info(
        "gateway starting: %s",
        {
            "routes": {route.path: route.topic for route in routes},
            "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
            "kafka_security_protocol": settings.kafka_security.protocol,
            **config.describe(),
        },
    )
    if not config.tokens:
        logger.warning(
            "GATEWAY_TOKENS and GATEWAY_TOKENS_FILE are unset: anyone who reaches %s can send",
            config.listen,
        )
    producer = GatewayProducer(
        settings.kafka_bootstrap_servers,
        settings.kafka_security.client_options(),
        max_inflight_events=config.max_inflight_events,
        ack_timeout_s=config.ack_timeout_seconds,
        topics=[route.topic for route in routes],
    )
    gateway = Gateway(routes, config, producer, max_future_ms=settings.max_future_ms)
    asyncio.run(gateway.serve())


SERVE_FLOWS = {"clickstream": "dataflows.clickstream", "sensors": "dataflows.sensors"}


def serve_tables(settings: Settings, flow: str, specs: Sequence[str]) -> dict[str, Any]:
    """The live tables of `--flow`'s pipelines and each `--pipeline MODULE[:NAME]`'s,
    compiled as the flow compiles them, by name (unique across pipelines)."""
    from waxhouse.livetables import live_tables

    modules = [
        *(SERVE_FLOWS.values() if flow == "all" else () if flow == "none" else [SERVE_FLOWS[flow]]),
        *specs,
    ]
    tables: dict[str, Any] = {}
    for spec in modules:
        compiled = load_pipeline(spec).compile(settings.lateness_ms, settings.dedup_ms)
        for name, table in live_tables(compiled).items():
            if name in tables:
                raise SettingsError(
                    f"serve: two pipelines have a live table {name!r} ({tables[name].namespace}, "
                    f"{table.namespace}); serve them from separate processes"
                )
            tables[name] = table
    if not tables:
        raise SettingsError(
            f"serve: no live tables in {', '.join(modules) or 'no pipeline'} (declare "
            "live=windows.live(...) on a table)"
        )
    return tables


def run_serve(settings: Settings, args: argparse.Namespace) -> None:
    """Serve the live tables until SIGTERM/SIGINT (see waxhouse.serve)."""
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL must be set: serve reads the live tables from Redis")
    try:
        from waxhouse.serve.history import History
        from waxhouse.serve.server import LiveServer
        from waxhouse.serve.store import RedisReader
    except ImportError as e:
        raise SettingsError(
            f"serve needs the serve extra (from the repository: pip install -e '.[serve]'): {e}"
        ) from None
    tables = serve_tables(settings, args.flow, args.pipeline)
    config = settings.serve
    target = parse_clickhouse_url(settings.clickhouse_url)
    logger.info(
        "serve starting: %s",
        {
            "tables": {name: table.namespace for name, table in tables.items()},
            "redis_url": mask_url(settings.redis_url),
            "history": target.masked(),
            **config.describe(),
        },
    )
    if not config.tokens:
        logger.warning(
            "SERVE_TOKENS and SERVE_TOKENS_FILE are unset: anyone who reaches %s can read",
            config.listen,
        )

    async def serve() -> None:
        reader = RedisReader(settings.redis_url or "")
        history = History(target)
        try:
            await LiveServer(tables, reader, config, history).serve()
        finally:
            await reader.close()
            history.close()

    asyncio.run(serve())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waxhouse",
        description="Query the waxhouse ClickHouse store (CLICKHOUSE_URL), apply its schema, "
        "or produce generated events into Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    sql = commands.add_parser("sql", help="run one SQL statement and print its result")
    sql.add_argument("query", help='the SQL statement, e.g. "SELECT * FROM page_stats"')
    sql.add_argument(
        "--format", choices=("table", "json"), default="table", help="table (default) or JSON lines"
    )
    sql.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind a query parameter used as {NAME:Type} in the statement (repeatable)",
    )
    schema = commands.add_parser("schema", help="create the tables and views if missing")
    schema.add_argument(
        "--replicated",
        action="store_true",
        help="Replicated*MergeTree tables, created ON CLUSTER (needs --cluster)",
    )
    schema.add_argument("--cluster", help="the ClickHouse cluster name (remote_servers)")
    schema.add_argument("--print", action="store_true", help="print the DDL instead of applying it")
    schema.add_argument(
        "--pipeline",
        default=DEFAULT_PIPELINE,
        metavar="MODULE[:NAME]",
        help=f"the pipeline whose tables to create (default: {DEFAULT_PIPELINE})",
    )
    produce = commands.add_parser(
        "produce",
        help="produce generated events into Kafka (a load generator): click events into "
        "KAFKA_TOPIC, or with --flow sensors readings into SENSORS_TOPIC and the device "
        "registry into DEVICES_TOPIC",
    )
    produce.add_argument(
        "--flow", choices=("clickstream", "sensors"), default="clickstream", help="whose events"
    )
    produce.add_argument(
        "--rate", type=float, default=500.0, help="events per second (0: as fast as possible)"
    )
    produce.add_argument("--events", type=int, default=0, help="how many (0: until stopped)")
    produce.add_argument(
        "--seed", type=int, default=None, help="generator seed (default: the start time)"
    )
    produce.add_argument(
        "--malformed-ratio",
        type=float,
        default=0.01,
        help="share of deliberately broken records, to exercise the dead letters",
    )
    gateway = commands.add_parser(
        "gateway",
        help="serve HTTP and WebSocket endpoints that validate events with the flows' parsers "
        "and answer once Kafka has them (docs/gateway.md)",
    )
    gateway.add_argument(
        "--flow",
        choices=("all", *GATEWAY_FLOWS, "none"),
        default="all",
        help="whose endpoints: clickstream (/v1/events), sensors (/v1/readings), all "
        "(default), or none (only --route)",
    )
    gateway.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PATH=MODULE[:NAME]@TOPIC",
        help="also serve another pipeline's events at PATH into TOPIC, keyed by its key "
        "field, e.g. /v1/orders=shop.orders:pipeline@orders (repeatable)",
    )
    serve = commands.add_parser(
        "serve",
        help="serve the live tables (Redis) over HTTP, Server-Sent Events and WebSocket, and "
        "their history from ClickHouse (docs/serving.md)",
    )
    serve.add_argument(
        "--flow",
        choices=("all", *SERVE_FLOWS, "none"),
        default="all",
        help="whose live tables: clickstream, sensors, all (default), or none (only --pipeline)",
    )
    serve.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="MODULE[:NAME]",
        help="also serve this pipeline's live tables, e.g. shop.orders:pipeline (repeatable)",
    )
    _autoscale_parser(commands)
    return parser


def _autoscale_parser(commands: Any) -> None:
    autoscale = commands.add_parser(
        "autoscale",
        help="resize a flow to its input rate and lag, DS2-style (docs/operating.md#autoscaling)",
    )
    where = autoscale.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--metrics",
        action="append",
        metavar="URL",
        help="a running process's metrics, e.g. http://127.0.0.1:3030/metrics (repeatable, one "
        "per process); recommends only (with --dry-run)",
    )
    where.add_argument(
        "--local",
        metavar="FLOW",
        help="run FLOW (as for bytewax.run, e.g. dataflows.clickstream) as processes on this "
        "machine sharing --recovery-directory, and resize them",
    )
    where.add_argument(
        "--kubernetes",
        metavar="STATEFULSET",
        help="resize this StatefulSet (on the shared-recovery layout) and its address list "
        "together, through the Kubernetes API (in-cluster, or the local kubeconfig)",
    )
    autoscale.add_argument(
        "--namespace", default="waxhouse", help="--kubernetes: its namespace (default waxhouse)"
    )
    autoscale.add_argument(
        "--container", help="--kubernetes: the flow's container (default: the StatefulSet's name)"
    )
    autoscale.add_argument("--recovery-directory", type=Path, help="--local: the recovery state")
    autoscale.add_argument(
        "--logs", type=Path, default=Path("autoscale-logs"), help="--local: the processes' logs"
    )
    autoscale.add_argument("--processes", type=int, default=1, help="--local: to start with")
    autoscale.add_argument(
        "--snapshot-interval", type=float, default=10.0, help="--local: seconds between snapshots"
    )
    autoscale.add_argument("--dry-run", action="store_true", help="recommend, never rescale")
    autoscale.add_argument("--min", type=int, default=1, help="fewest processes (default 1)")
    autoscale.add_argument("--max", type=int, default=4, help="most processes (default 4)")
    autoscale.add_argument(
        "--target-utilisation", type=float, default=0.7, help="of each process (default 0.7)"
    )
    autoscale.add_argument(
        "--catch-up", type=float, default=300.0, help="seconds to clear a backlog (default 300)"
    )
    autoscale.add_argument(
        "--dead-band", type=float, default=0.2, help="share below the target before scaling down"
    )
    autoscale.add_argument("--up-delay", type=float, default=30.0, help="seconds (default 30)")
    autoscale.add_argument("--down-delay", type=float, default=300.0, help="seconds (default 300)")
    autoscale.add_argument(
        "--cooldown", type=float, default=120.0, help="seconds between actions (default 120)"
    )
    autoscale.add_argument(
        "--capacity", type=float, help="records/s per process until one is measured"
    )
    autoscale.add_argument(
        "--cores-per-process",
        type=float,
        default=1.0,
        help="CPU a process may use, e.g. its Kubernetes limit (default 1: one worker)",
    )
    autoscale.add_argument(
        "--interval", type=float, default=15.0, help="seconds between looks (default 15)"
    )
    autoscale.add_argument("--looks", type=int, help="stop after this many looks")
    autoscale.add_argument(
        "--metrics-port",
        type=int,
        help="serve the autoscaler's own metrics (waxhouse_autoscale_*) on this port",
    )


def run_autoscale(args: argparse.Namespace, out: TextIO) -> None:
    if args.metrics_port is not None:
        start_http_server(args.metrics_port)
    policy = Policy(
        min_processes=args.min,
        max_processes=args.max,
        target_utilisation=args.target_utilisation,
        catch_up_s=args.catch_up,
        dead_band=args.dead_band,
        up_delay_s=args.up_delay,
        down_delay_s=args.down_delay,
        cooldown_s=args.cooldown,
        capacity=args.capacity,
        cores_per_process=args.cores_per_process,
    )
    if args.metrics:
        controller = Controller(policy, current=len(args.metrics))
        Autoscaler(controller, out, urls=args.metrics).run(args.interval, args.looks)
        return
    if args.kubernetes:
        target = Target(args.kubernetes, args.namespace, args.container or args.kubernetes)
        actuator = connect(target)
        controller = Controller(policy, current=actuator.size)
        autoscaler = Autoscaler(controller, out, actuator=actuator, dry_run=args.dry_run)
        autoscaler.run(args.interval, args.looks)
        return
    cluster = LocalCluster(
        args.local, args.recovery_directory, args.logs, snapshot_s=args.snapshot_interval
    )
    cluster.start(args.processes)
    try:
        controller = Controller(policy, current=args.processes)
        autoscaler = Autoscaler(controller, out, actuator=cluster, dry_run=args.dry_run)
        autoscaler.run(args.interval, args.looks)
    finally:
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        "INFO"
        if args.verbose or args.command in ("produce", "gateway", "serve", "autoscale")
        else "WARNING"
    )
    if args.command == "schema" and args.replicated != (args.cluster is not None):
        parser.error("--replicated and --cluster go together")
    if args.command == "autoscale":
        if args.metrics and not args.dry_run:
            parser.error("--metrics has no actuator: add --dry-run, or run the flow with --local")
        if args.local and args.recovery_directory is None:
            parser.error("--local needs --recovery-directory")
        try:
            run_autoscale(args, sys.stdout)
        except WaxhouseError as e:
            print(f"waxhouse: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return 0
        return 0
    try:
        if args.command == "schema" and args.print:
            print_schema(pipeline_statements(args.pipeline), args.cluster, sys.stdout)
            return 0
        settings = load_settings(gateway=args.command == "gateway", serve=args.command == "serve")
        target = parse_clickhouse_url(settings.clickhouse_url)
        params = _parameters(args.param) if args.command == "sql" else {}
        if args.command == "produce":
            run_produce(settings, args)
        elif args.command == "gateway":
            run_gateway(settings, args)
        elif args.command == "serve":
            run_serve(settings, args)
        elif args.command == "sql":
            run_sql(target, args.query, params, args.format, sys.stdout)
        else:
            run_schema(target, pipeline_statements(args.pipeline), args.cluster, sys.stdout)
    except SettingsError as e:
        print(f"waxhouse: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (ClickHouseError, WaxhouseError) as e:
        print(f"waxhouse: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
