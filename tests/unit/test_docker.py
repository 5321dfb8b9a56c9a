"""The docker/ deployment, checked without a Docker engine: the image's Dockerfile, build
context and dependency lock, its entrypoint scripts (run for real), and the compose stack,
against the Compose Specification's schema and against the project it deploys (settings,
CLI, Prometheus and Grafana provisioning), the Redis hot store and `waxhouse serve` included.
"""

from __future__ import annotations

import graphlib
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client import REGISTRY, generate_latest

from tests.support.compose import interpolate, read_env_file, refs_in
from tests.support.compose_schema import ComposeSchemaUnavailable, compose_spec_schema
from waxhouse.cli import build_parser
from waxhouse.connectors.clickhouse_store import parse_clickhouse_url
from waxhouse.monitoring import exposition_types, promql_metric_names, served_family
from waxhouse.settings import load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest needs tomli on Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_PATH = DOCKER / "compose.yaml"
ENV_EXAMPLE_PATH = DOCKER / ".env.example"
DOCKERFILE_PATH = DOCKER / "Dockerfile"
DOCKERIGNORE_PATH = DOCKER / "Dockerfile.dockerignore"
REQUIREMENTS_PATH = DOCKER / "requirements.txt"
ENTRYPOINT = DOCKER / "entrypoint.sh"
ENTRYPOINT_RECOVERY = DOCKER / "entrypoint-recovery.sh"
SETTINGS_PATH = REPO / "waxhouse" / "settings.py"
PROMETHEUS_CONFIG_PATH = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = DOCKER / "grafana" / "provisioning"
DASHBOARD_PATH = DOCKER / "grafana" / "dashboards" / "waxhouse.json"
# The dashboard's "Redis and serve" row shows each of these metric families: the flows'
# Redis sink's and `waxhouse serve`'s.
REDIS_AND_SERVE_METRICS = {
    "waxhouse_redis_rows_total",  # written / refused / provisional / dropped per table
    "waxhouse_redis_write_seconds",
    "waxhouse_redis_errors_total",
    "waxhouse_redis_up",
    "waxhouse_serve_requests_total",  # by status
    "waxhouse_serve_request_seconds",
    "waxhouse_serve_streams",  # by transport
    "waxhouse_serve_stream_events_total",
    "waxhouse_serve_push_delay_seconds",  # per table
    "waxhouse_serve_redis_up",
}

SERVICES = {
    "kafka",
    "kafka-topics",
    "clickhouse",
    "schema",
    "clickstream",
    "loadgen",
    "sensors",
    "sensors-loadgen",
    "gateway",
    "redis",
    "serve",
    "prometheus",
    "grafana",
}
FLOW = "clickstream"  # the image's default command, and the service that builds it
FLOWS = {FLOW, "sensors"}
GATEWAY = "gateway"  # `waxhouse gateway`: its own /healthz and /metrics
SERVE = "serve"  # `waxhouse serve`: its own /healthz and /metrics
REDIS = "redis"  # the hot store the flows write and serve reads
WAXHOUSE_SERVICES = {"schema", *FLOWS, "loadgen", "sensors-loadgen", GATEWAY, SERVE}
ONE_SHOT = {"kafka-topics", "schema"}
# Long-running, but with nothing to probe: the load generators serve no endpoint, and the
# image's healthcheck is the flows'. Nothing may wait for them to be healthy.
NO_HEALTH_ENDPOINT = {"loadgen", "sensors-loadgen"}
API_PORT = 3030
CLUSTER_PORT = 9999
GATEWAY_PORT = 8080
SERVE_PORT = 8090
REDIS_PORT = 6379
RECOVERY_DIR = "/var/lib/waxhouse/recovery"
RUNTIME_UID = 65532
WAXHOUSE_CMD = ["python", "-m", "bytewax.run", "dataflows.clickstream"]
# Linux x86_64 CPython 3.11: the image's platform, for evaluating dependency markers.
IMAGE_MARKERS = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


# ---- helpers -------------------------------------------------------------------------


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def project_version() -> str:
    return str(pyproject()["project"]["version"])


def settings_env_names() -> set[str]:
    """The environment variables waxhouse/settings.py reads (its quoted NAME_LIKE_THIS),
    and the `<PREFIX>_TOKENS` / `<PREFIX>_TOKENS_FILE` pairs its `_tokens(env, "PREFIX")`
    reads (the prefix defaulting as its signature says)."""
    source = SETTINGS_PATH.read_text(encoding="utf-8")
    names = set(re.findall(r"[\"']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[\"']", source))
    default = re.search(r"def _tokens\([^)]*prefix: str = \"([A-Z]+)\"", source)
    for prefix in re.findall(r"_tokens\(\s*env\s*(?:,\s*\"([A-Z]+)\")?\s*\)", source):
        prefix = prefix or (default.group(1) if default else "")
        if prefix:
            names |= {f"{prefix}_TOKENS", f"{prefix}_TOKENS_FILE"}
    return names


@cache
def bytewax_env_names() -> frozenset[str]:
    """The BYTEWAX_* names in the installed bytewax package, its Rust extension included
    (the API server's variables are read there)."""
    spec = importlib.util.find_spec("bytewax._bytewax")
    assert spec is not None and spec.origin is not None
    names: set[str] = set()
    for path in Path(spec.origin).parent.rglob("*"):
        if path.suffix in (".py", ".so"):
            names.update(
                m.decode() for m in re.findall(rb"BYTEWAX_[A-Z][A-Z_]*[A-Z]", path.read_bytes())
            )
    return frozenset(names)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped,
    each with the index of its build stage."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not pending and not line):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_pairs(instructions: list[Instruction]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                assert sep, f"ENV in the legacy `ENV name value` form: {instruction.args}"
                pairs[name] = value
    return pairs


def healthcheck(instructions: list[Instruction]) -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and its exec-form command."""
    (check,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    options_text, sep, command = check.args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    options = dict(opt.removeprefix("--").split("=", 1) for opt in options_text.split())
    assert command.lstrip().startswith("["), "HEALTHCHECK CMD should be in exec form"
    return options, json.loads(command)


def named_and_bind_mounts(service: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """target -> volume name, and target -> host path (relative to docker/)."""
    named: dict[str, str] = {}
    binds: dict[str, str] = {}
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        source, target, *_ = entry.split(":")
        if source.startswith((".", "/")):
            binds[target] = source
        else:
            named[target] = source
    return named, binds


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether `path` (relative to the context) is left out: the last pattern matching
    the path or one of its parent directories decides, `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def run_sh(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE_PATH)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in REQUIREMENTS_PATH.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!-]*)", line)
        assert found, f"not a name==version pin: {line!r}"
        name = canonicalize_name(found.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = found.group(2)
    return pins


# ---- the image -----------------------------------------------------------------------


def test_every_stage_starts_from_the_same_exact_python_311_slim_bookworm_tag(
    dockerfile: list[Instruction],
) -> None:
    froms = [i.args for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 2, "a multi-stage build: builder and runtime"
    images = set()
    for args in froms:
        image = args.split()[0]
        found = re.fullmatch(r"python:(3\.11\.\d+-slim-bookworm)(@sha256:[0-9a-f]{64})?", image)
        assert found, f"FROM {image}: pin the official python image to 3.11.<patch>-slim-bookworm"
        images.add(image)
    # The venv built in the first stage links to the interpreter of the last.
    assert len(images) == 1, f"the stages use different bases: {images}"


def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile: list[Instruction]) -> None:
    final = final_stage(dockerfile)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    found = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert found, f"USER {users[-1]}: numeric uid:gid, so runAsNonRoot can verify it"
    assert int(found.group(1)) == RUNTIME_UID and int(found.group(2)) == RUNTIME_UID
    created = " ".join(i.args for i in final if i.keyword == "RUN")
    assert re.search(rf"groupadd\b.*--gid {RUNTIME_UID}\b", created)
    assert re.search(rf"useradd\b.*--uid {RUNTIME_UID} --gid {RUNTIME_UID}\b", created)


def test_no_build_tools_and_only_the_venv_reach_the_final_stage(
    dockerfile: list[Instruction],
) -> None:
    for instruction in dockerfile:
        if instruction.keyword == "RUN":
            assert not re.search(
                r"\b(apt-get|apt|apk|yum|dnf)\s+(install|add)\b|\b(gcc|g\+\+|clang|"
                r"build-essential|python3-dev)\b",
                instruction.args,
            ), f"no system packages or compilers are needed: RUN {instruction.args}"
    copies_from_builder = [
        i.args for i in final_stage(dockerfile) if i.keyword == "COPY" and "--from=" in i.args
    ]
    assert copies_from_builder == ["--from=builder /venv /venv"]


def test_the_builder_installs_the_lock_from_wheels_then_the_project_without_deps(
    dockerfile: list[Instruction],
) -> None:
    builder = [i for i in dockerfile if i.stage == 0]
    pip_runs = [i.args for i in builder if i.keyword == "RUN" and "pip install" in i.args]
    assert len(pip_runs) == 2, pip_runs
    lock_install, project_install = pip_runs
    assert "-r /tmp/requirements.txt" in lock_install and "--only-binary=:all:" in lock_install
    copied = [i.args for i in builder if i.keyword == "COPY"]
    assert "docker/requirements.txt /tmp/requirements.txt" in copied
    assert re.search(r"pip install .*--no-deps \.(\s|$)", project_install)
    assert " -e " not in project_install and "--editable" not in project_install
    for run in pip_runs:
        assert "--no-cache-dir" in run, f"no pip cache in the layers: {run}"
    assert any(i.keyword == "RUN" and "python -m venv /venv" in i.args for i in builder)


def test_the_runtime_environment(dockerfile: list[Instruction]) -> None:
    env = env_pairs(final_stage(dockerfile))
    assert env["PATH"].startswith("/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONPATH"] == "/bytewax"  # dataflows/ importable wherever waxctl runs
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    assert env["BYTEWAX_DATAFLOW_API_PORT"] == str(API_PORT)
    for name in env:
        if name.startswith("BYTEWAX_"):
            assert name in bytewax_env_names(), f"bytewax 0.21.1 reads no {name}"
    # Bytewax's API server writes dataflow.json there: it must be the runtime user's.
    created = " ".join(i.args for i in final_stage(dockerfile) if i.keyword == "RUN")
    owned = re.findall(rf"install -d -o {RUNTIME_UID} -g {RUNTIME_UID} -m \d+ ([^&]+)", created)
    owned_dirs = {d for group in owned for d in group.split()}
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] in owned_dirs
    assert RECOVERY_DIR in owned_dirs


def test_healthcheck_probes_the_metrics_endpoint_on_an_exposed_port(
    dockerfile: list[Instruction],
) -> None:
    final = final_stage(dockerfile)
    options, command = healthcheck(final)
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    assert command[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{API_PORT}/metrics" in command[2]
    compile(command[2], "<healthcheck>", "exec")  # valid Python
    exposed = {int(p) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {API_PORT, CLUSTER_PORT, GATEWAY_PORT, SERVE_PORT} <= exposed
    # `waxhouse gateway` in the image listens on every interface, on its exposed port.
    # SERVE_LISTEN is not set for every container: in a flow without REDIS_URL it would
    # make the flow serve its live tables itself (compose and k8s/serve set it for serve).
    assert env_pairs(final)["GATEWAY_LISTEN"] == f"0.0.0.0:{GATEWAY_PORT}"
    assert "SERVE_LISTEN" not in env_pairs(final)


def test_default_command_workdir_entrypoints_and_labels(dockerfile: list[Instruction]) -> None:
    final = final_stage(dockerfile)
    (cmd,) = [i.args for i in final if i.keyword == "CMD"]
    assert json.loads(cmd) == WAXHOUSE_CMD  # exec form: python receives the signals
    assert not [i for i in final if i.keyword == "ENTRYPOINT"], (
        "an ENTRYPOINT would prefix the compose services' commands"
    )
    workdirs = [i.args for i in final if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/bytewax"
    after_workdir = final[[i.args for i in final].index("/bytewax") :]
    assert any(
        i.keyword == "COPY" and i.args == "docker/entrypoint.sh docker/entrypoint-recovery.sh ./"
        for i in after_workdir
    )
    labels = dict(
        word.split("=", 1) for i in final if i.keyword == "LABEL" for word in shlex.split(i.args)
    )
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.title"] == "waxhouse"
    assert (REPO / labels["org.opencontainers.image.source"]) == DOCKERFILE_PATH


def test_build_context_holds_what_the_image_is_built_from_and_nothing_else(
    dockerfile: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE_PATH.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    sources: list[str] = []
    for i in dockerfile:
        if i.keyword == "COPY" and "--from=" not in i.args:
            sources.extend(i.args.split()[:-1])
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" in relative:
                assert dockerignore_excludes(patterns, relative)
            else:
                assert not dockerignore_excludes(patterns, relative), f"{relative} left out"
    for outside in (".git/HEAD", "data/x", ".cache/x", "tests/unit/test_docker.py", "bench/x"):
        assert dockerignore_excludes(patterns, outside), f"{outside} is in the build context"
    for outside in ("docker/.env", "docker/compose.yaml", "k8s/x", "build/lib/x"):
        assert dockerignore_excludes(patterns, outside), f"{outside} is in the build context"


# ---- the dependency lock -------------------------------------------------------------


# The extras the image installs: the confluent source, `waxhouse gateway`'s server,
# `waxhouse serve`'s and `waxhouse autoscale --kubernetes`'s client.
IMAGE_EXTRAS = ("confluent", "gateway", "serve", "autoscale")


def _runtime_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    listed = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        listed += project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


def test_the_lock_pins_every_runtime_dependency_at_pyprojects_version(
    lock: dict[str, str],
) -> None:
    for requirement in _runtime_requirements():
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"pyproject should pin {requirement}"
        name = canonicalize_name(requirement.name)
        assert lock.get(name) == spec.version, f"{name}: lock {lock.get(name)}, pyproject {spec}"


def test_the_lock_leaves_out_the_other_extras(lock: dict[str, str]) -> None:
    runtime = {canonicalize_name(r.name) for r in _runtime_requirements()}
    extras = pyproject()["project"]["optional-dependencies"]
    others = {
        canonicalize_name(Requirement(text).name)
        for extra in ("embedded", "dev", "bench")
        for text in extras[extra]
    }
    assert "chdb" in others
    # The Kubernetes client needs these too: in the image as its dependencies.
    others -= {"pyyaml", "requests"}
    assert not (others - runtime) & set(lock), "the image needs no embedded/dev/bench packages"
    assert "waxhouse" not in lock


def test_the_lock_is_closed_under_dependencies(lock: dict[str, str]) -> None:
    """Each pinned package's own requirements (for Linux x86_64 CPython 3.11) are pinned,
    at a version they accept. Read from the installed distributions where their version
    is the pinned one; the direct dependencies always are (dev installs those pins)."""
    from importlib.metadata import PackageNotFoundError, distribution

    checked = set()
    for name, version in lock.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked.add(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(
                {**IMAGE_MARKERS, "extra": ""}
            ):
                continue
            needed = canonicalize_name(requirement.name)
            assert needed in lock, f"{name} {version} needs {requirement}, not in the lock"
            assert requirement.specifier.contains(lock[needed], prereleases=True), (
                f"{name} {version} needs {requirement}, the lock has {lock[needed]}"
            )
    direct = {canonicalize_name(r.name) for r in _runtime_requirements()}
    assert direct <= checked, f"not installed at the pinned version: {direct - checked}"


# ---- the entrypoint scripts ----------------------------------------------------------


@pytest.mark.parametrize("script", [ENTRYPOINT, ENTRYPOINT_RECOVERY], ids=lambda p: p.name)
def test_entrypoint_scripts_are_posix_sh(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    done = subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A `python` that records its pid, working directory and arguments."""
    bin_dir, record = tmp_path / "bin", tmp_path / "python-called"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$$" "$(pwd)" "$@" > "{record}"\n')
    fake.chmod(0o755)
    return bin_dir, record


def test_entrypoint_execs_bytewax_in_the_workdir_with_the_charts_variables(
    tmp_path: Path, fake_python: tuple[Path, Path]
) -> None:
    bin_dir, record = fake_python
    workdir = tmp_path / "var-bytewax"
    workdir.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "BYTEWAX_WORKDIR": str(workdir),
        "BYTEWAX_PYTHON_FILE_PATH": str(workdir / "clickstream.py"),
    }
    shell = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), "-w", "2"], env=env, cwd=tmp_path, text=True
    )
    assert shell.wait(timeout=30) == 0
    pid, cwd, *args = record.read_text().splitlines()
    assert int(pid) == shell.pid, "python should replace the shell (exec), to get SIGTERM"
    assert Path(cwd) == workdir
    assert args == ["-m", "bytewax.run", str(workdir / "clickstream.py"), "-w", "2"]


def test_entrypoint_runs_the_image_flow_by_default_and_stops_on_a_missing_workdir(
    tmp_path: Path, fake_python: tuple[Path, Path]
) -> None:
    bin_dir, record = fake_python
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "BYTEWAX_WORKDIR": str(tmp_path)}
    assert run_sh(ENTRYPOINT, env, tmp_path).returncode == 0
    assert record.read_text().splitlines()[2:] == WAXHOUSE_CMD[1:]
    record.unlink()
    env["BYTEWAX_WORKDIR"] = str(tmp_path / "missing")
    assert run_sh(ENTRYPOINT, env, tmp_path).returncode != 0
    assert not record.exists(), "set -e: no flow without its working directory"


def test_entrypoint_recovery_only_creates_the_directory(
    tmp_path: Path, fake_python: tuple[Path, Path]
) -> None:
    bin_dir, record = fake_python
    recovery = tmp_path / "volume" / "recovery"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "BYTEWAX_RECOVERY_DIRECTORY": str(recovery)}
    done = run_sh(ENTRYPOINT_RECOVERY, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert recovery.is_dir()
    assert list(recovery.iterdir()) == [], "the flow creates its own partition at start"
    assert not record.exists(), "no python, no bytewax.recovery"
    # Existing state is left as it is.
    partition = recovery / "part-0.sqlite3"
    partition.write_bytes(b"state")
    assert run_sh(ENTRYPOINT_RECOVERY, env, tmp_path).returncode == 0
    assert [p.name for p in recovery.iterdir()] == [partition.name]
    assert partition.read_bytes() == b"state"


def test_entrypoint_recovery_without_recovery_does_nothing(tmp_path: Path) -> None:
    before = sorted(tmp_path.iterdir())
    done = run_sh(ENTRYPOINT_RECOVERY, {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert done.returncode == 0 and "recovery is off" in done.stderr
    assert sorted(tmp_path.iterdir()) == before


# ---- the compose stack ---------------------------------------------------------------


def test_the_stack_has_its_services_and_a_name(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert compose["name"] == "waxhouse"
    assert "version" not in compose


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    try:
        schema = compose_spec_schema()
    except ComposeSchemaUnavailable as e:
        pytest.fail(str(e))
    validator = Draft202012Validator(schema)
    document = interpolate(compose, env_example)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]
    assert not errors, "\n".join(errors)
    # The validator does reject what Compose rejects.
    broken = json.loads(json.dumps(document))
    broken["services"]["kafka"]["imagee"] = broken["services"]["kafka"].pop("image")
    broken["services"]["clickhouse"]["restart"] = ["no"]
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_image_is_pinned_to_a_version_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        found = re.fullmatch(
            r"[a-z0-9][a-z0-9._/-]*:(?P<tag>[\w][\w.-]*)(@sha256:[0-9a-f]{64})?", image
        )
        assert found, f"{name}: {image} has no explicit tag"
        tag = found.group("tag")
        assert tag != "latest"
        if name in WAXHOUSE_SERVICES:
            assert image == f"waxhouse:{project_version()}", name
        else:
            # An exact version, or its Alpine variant (redis:7.4.6-alpine).
            version = r"v?\d+(\.\d+){2,3}(-alpine)?"
            assert re.fullmatch(version, tag), f"{name}: {image} is not a version"


def test_one_service_builds_the_image_the_others_reuse(services: dict[str, dict[str, Any]]) -> None:
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == [FLOW]
    build = services[FLOW]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE_PATH
    assert services[FLOW]["pull_policy"] == "build"
    for name in WAXHOUSE_SERVICES - {FLOW}:
        # Built by the flow's service, never pulled from a registry.
        assert services[name]["pull_policy"] == "never", name


def test_restart_policies_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == ONE_SHOT
    for name, service in services.items():
        check = service.get("healthcheck")
        if name in ONE_SHOT:
            continue
        assert service.get("restart") == "unless-stopped", name
        if name in NO_HEALTH_ENDPOINT:
            assert check == {"disable": True}, name
            continue
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
        assert {"interval", "timeout", "retries"} <= set(check), name
    for name in WAXHOUSE_SERVICES - FLOWS - {GATEWAY, SERVE}:
        # The image's healthcheck probes the flow's metrics: not theirs.
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_the_flow_healthcheck_is_the_images(
    services: dict[str, dict[str, Any]], dockerfile: list[Instruction]
) -> None:
    options, command = healthcheck(final_stage(dockerfile))
    check = services[FLOW]["healthcheck"]
    assert check["test"] == ["CMD", *command]
    assert check["interval"] == options["interval"]
    assert check["timeout"] == options["timeout"]
    assert check["start_period"] == options["start-period"]
    assert str(check["retries"]) == options["retries"]


def test_dependencies_form_a_dag_of_healthy_or_completed_services(
    services: dict[str, dict[str, Any]],
) -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        graph[name] = set(depends)
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            if target in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", (name, target)
            else:
                assert spec["condition"] == "service_healthy", (name, target)
                assert target not in NO_HEALTH_ENDPOINT
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError if cyclic
    assert set(order) == SERVICES
    depended_on = set().union(*graph.values())
    assert depended_on >= ONE_SHOT, "a one-shot service nothing waits for"
    for flow in FLOWS:
        assert {"kafka-topics", "schema"} <= graph[flow]


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: {port!r}"
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: {port}"
            published += 1
    assert published >= 6
    assert f"127.0.0.1:{API_PORT}:{API_PORT}" in services[FLOW]["ports"]


def test_volumes_are_declared_and_bind_mounts_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        named, binds = named_and_bind_mounts(service)
        assert set(named.values()) <= declared, f"{name}: undeclared volume"
        used.update(named.values())
        for target, source in binds.items():
            assert source.startswith("./"), f"{name}: {source} is not relative to docker/"
            assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
            entry = f"{source}:{target}:ro"
            assert entry in service["volumes"], f"{name}: mount {source} read-only"
    assert used == declared, f"declared but unused: {declared - used}"


def test_the_flows_recovery_directory_is_a_named_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    flow = services[FLOW]
    environment = flow["environment"]
    assert environment["BYTEWAX_RECOVERY_DIRECTORY"] == RECOVERY_DIR
    named, _ = named_and_bind_mounts(flow)
    assert RECOVERY_DIR in named
    assert int(environment["BYTEWAX_SNAPSHOT_INTERVAL"]) > 0
    assert "BYTEWAX_RECOVERY_BACKUP_INTERVAL" in environment


def test_waxhouse_services_set_only_variables_the_project_reads(
    services: dict[str, dict[str, Any]], dockerfile: list[Instruction]
) -> None:
    known = settings_env_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "WINDOW_SECONDS"} <= known
    assert "CLICKHOUSE_CREATE_SCHEMA" in known
    for name in WAXHOUSE_SERVICES:
        for variable in services[name].get("environment", {}):
            if variable.startswith("BYTEWAX_"):
                assert variable in bytewax_env_names(), f"{name}: bytewax reads no {variable}"
            else:
                assert variable in known, f"{name}: the project reads no {variable}"
    runtime = {"PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    for variable in env_pairs(final_stage(dockerfile)):
        assert variable in known | runtime or variable in bytewax_env_names(), variable


def test_the_flows_environment_is_a_valid_configuration_for_the_stack(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    environment = interpolate(services[FLOW]["environment"], env_example)
    settings = load_settings({k: str(v) for k, v in environment.items()})
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.kafka_client == "confluent"
    assert settings.window_seconds == int(env_example["WINDOW_SECONDS"])
    assert str(environment["CLICKHOUSE_CREATE_SCHEMA"]).lower() == "false"
    target = parse_clickhouse_url(settings.clickhouse_url)
    assert (target.host, target.port) == ("clickhouse", 8123)
    # The flow, the schema job, the server and Grafana agree on the credentials.
    expected = {
        "CLICKHOUSE_USER": target.username,
        "CLICKHOUSE_PASSWORD": target.password,
        "CLICKHOUSE_DB": target.database,
    }
    assert expected == {name: env_example[name] for name in expected}
    for name in ("clickhouse", "grafana"):
        env = interpolate(services[name]["environment"], env_example)
        assert {k: env[k] for k in expected} == expected, name
    schema_env = interpolate(services["schema"]["environment"], env_example)
    assert schema_env["CLICKHOUSE_URL"] == environment["CLICKHOUSE_URL"]
    # The topics the flow reads and writes are the ones created; the load goes to the first.
    created = " ".join(interpolate(services["kafka-topics"]["command"], env_example))
    for topic in (settings.kafka_topic, settings.kafka_dlq_topic):
        assert f"--create --if-not-exists --topic {topic} " in created, topic
    loadgen = services["loadgen"]["environment"]
    assert loadgen["KAFKA_TOPIC"] == settings.kafka_topic
    assert loadgen["KAFKA_BOOTSTRAP_SERVERS"] == settings.kafka_bootstrap_servers


def test_the_waxhouse_commands_are_ones_the_cli_accepts(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    assert "command" not in services[FLOW] and "entrypoint" not in services[FLOW]
    # `sh -c "waxhouse schema && waxhouse schema --pipeline dataflows.sensors"`
    shell, flag, script = interpolate(services["schema"]["command"], env_example)
    assert (shell, flag) == ("sh", "-c")
    pipelines = []
    for command in script.split(" && "):
        schema = shlex.split(command)
        assert schema[0] == "waxhouse"
        args = build_parser().parse_args(schema[1:])
        assert args.command == "schema"
        pipelines.append(args.pipeline)
    assert pipelines == ["dataflows.clickstream", "dataflows.sensors"]
    assert services["sensors"]["command"] == ["python", "-m", "bytewax.run", "dataflows.sensors"]
    for name, flow, rate in (
        ("loadgen", "clickstream", "LOADGEN_RATE"),
        ("sensors-loadgen", "sensors", "SENSORS_LOADGEN_RATE"),
    ):
        produce = interpolate(services[name]["command"], env_example)
        assert produce[0] == "waxhouse"
        args = build_parser().parse_args(produce[1:])
        assert args.command == "produce" and args.flow == flow
        assert float(args.rate) == float(env_example[rate])


def test_the_gateway_service_serves_the_flows_topics_where_it_is_probed(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    gateway = services[GATEWAY]
    command = gateway["command"]
    assert command[0] == "waxhouse"
    args = build_parser().parse_args(command[1:])
    assert args.command == "gateway"
    environment = interpolate(gateway["environment"], env_example)
    settings = load_settings({k: str(v) for k, v in environment.items()}, gateway=True)
    assert settings.gateway.tokens == tuple(env_example["GATEWAY_TOKENS"].split(","))
    host, port = settings.gateway.listen.rsplit(":", 1)
    assert host == "0.0.0.0", "inside the container: every interface, or nothing reaches it"
    assert int(port) == GATEWAY_PORT, "the port the image exposes"
    assert gateway["ports"] == [f"127.0.0.1:{port}:{port}"]
    test = gateway["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/healthz" in test[3]
    compile(test[3], "<healthcheck>", "exec")
    # It writes what the flows read, on the broker they read from, once the topics exist.
    for flow, name in ((FLOW, "kafka_topic"), ("sensors", "sensors_topic")):
        flow_env = interpolate(services[flow]["environment"], env_example)
        flow_settings = load_settings({k: str(v) for k, v in flow_env.items()})
        assert getattr(settings, name) == getattr(flow_settings, name), flow
        assert settings.kafka_bootstrap_servers == flow_settings.kafka_bootstrap_servers
    created = " ".join(interpolate(services["kafka-topics"]["command"], env_example))
    for topic in (settings.kafka_topic, settings.sensors_topic):
        assert f"--create --if-not-exists --topic {topic} " in created, topic
    assert set(gateway["depends_on"]) == {"kafka", "kafka-topics"}


def test_redis_persists_and_is_probed_and_the_flows_write_it_once_healthy(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    redis = services[REDIS]
    command = interpolate(redis["command"], env_example)
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes", "a restart keeps what Redis held"
    assert options["--appendfsync"] == "everysec"
    # Bounded, below the container's limit, evicting only keys that have a TTL.
    assert options["--maxmemory-policy"] == "volatile-lru"
    maxmemory = re.fullmatch(r"(\d+)mb", options["--maxmemory"])
    limit = re.fullmatch(r"(\d+)m", redis["mem_limit"])
    assert maxmemory and limit and int(maxmemory.group(1)) <= int(limit.group(1)) // 2
    named, _ = named_and_bind_mounts(redis)
    assert "/data" in named, "the append-only file on a named volume"
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("redis-cli ping")
    assert redis["ports"] == [f"127.0.0.1:{REDIS_PORT}:{REDIS_PORT}"]
    for flow in FLOWS:
        environment = interpolate(services[flow]["environment"], env_example)
        settings = load_settings({k: str(v) for k, v in environment.items()})
        assert settings.redis_url is not None, f"{flow} keeps no live tables in Redis"
        url = urllib.parse.urlsplit(settings.redis_url)
        assert (url.scheme, url.hostname, url.port, url.path) == ("redis", REDIS, REDIS_PORT, "/0")
        assert services[flow]["depends_on"][REDIS] == {"condition": "service_healthy"}


def test_the_serve_service_reads_what_the_flows_write_where_it_is_probed(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    serve = services[SERVE]
    command = serve["command"]
    assert command[0] == "waxhouse"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve"
    environment = interpolate(serve["environment"], env_example)
    settings = load_settings({k: str(v) for k, v in environment.items()}, serve=True)
    assert settings.serve.tokens == tuple(env_example["SERVE_TOKENS"].split(","))
    assert env_example["SERVE_TOKENS"] != env_example["GATEWAY_TOKENS"]
    host, port = settings.serve.listen.rsplit(":", 1)
    assert host == "0.0.0.0", "inside the container: every interface, or nothing reaches it"
    assert int(port) == SERVE_PORT, "the port the image exposes"
    assert serve["ports"] == [f"127.0.0.1:{port}:{port}"]
    test = serve["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/healthz" in test[3]
    compile(test[3], "<healthcheck>", "exec")
    # The Redis the flows write, the ClickHouse they write (history), and their windows.
    for flow in FLOWS:
        flow_env = interpolate(services[flow]["environment"], env_example)
        flow_settings = load_settings({k: str(v) for k, v in flow_env.items()})
        assert settings.redis_url == flow_settings.redis_url, flow
        assert settings.clickhouse_url == flow_settings.clickhouse_url, flow
        for name, value in flow_env.items():
            if name in environment and not name.startswith(("KAFKA_", "BYTEWAX_")):
                assert environment[name] == value, (flow, name)
    for name in ("WINDOW_SECONDS", "ALLOWED_LATENESS_SECONDS", "SENSOR_WINDOW_SECONDS"):
        assert name in environment, f"serve needs the flows' {name} to place their windows"
    assert serve["depends_on"] == {
        REDIS: {"condition": "service_healthy"},
        "schema": {"condition": "service_completed_successfully"},
    }


def test_variables_are_documented_in_env_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    refs = list(refs_in(compose))
    assert refs
    defaults: dict[str, set[str]] = {}
    for ref in refs:
        assert ref.op is not None or ref.name in env_example, f"${{{ref.name}}}: no default"
        assert ref.name in env_example, f"{ref.name} is not in docker/.env.example"
        if ref.op in (":-", "-"):
            defaults.setdefault(ref.name, set()).add(ref.arg or "")
    for name, values in defaults.items():
        assert values == {env_example[name]}, f"{name}: defaults {values} vs .env.example"
    secrets = ("CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "GATEWAY_TOKENS", "SERVE_TOKENS")
    for secret in secrets:
        ops = {ref.op for ref in refs if ref.name == secret}
        assert ops == {":?"}, f"{secret} must be set: ${{{secret}:?message}}"
    assert {ref.name for ref in refs} == set(env_example), "unused settings in .env.example"
    # The password goes into CLICKHOUSE_URL unchanged.
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", env_example["CLICKHOUSE_PASSWORD"])
    with pytest.raises(KeyError, match="CLICKHOUSE_PASSWORD"):
        interpolate(compose, {k: v for k, v in env_example.items() if k != "CLICKHOUSE_PASSWORD"})


def test_prometheus_scrapes_the_flow_service_on_its_api_port(
    services: dict[str, dict[str, Any]], dockerfile: list[Instruction]
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG_PATH.read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "waxhouse"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    api_port = env_pairs(final_stage(dockerfile))["BYTEWAX_DATAFLOW_API_PORT"]
    assert targets == [f"{FLOW}:{api_port}", f"sensors:{api_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # The gateway serves /metrics on the port it listens on, as its own job.
    (gateway_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "waxhouse-gateway"]
    listen = services[GATEWAY]["environment"]["GATEWAY_LISTEN"]
    assert [t for g in gateway_job["static_configs"] for t in g["targets"]] == [
        f"{GATEWAY}:{listen.rpartition(':')[2]}"
    ]
    assert gateway_job.get("metrics_path", "/metrics") == "/metrics"
    # So does serve.
    (serve_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "waxhouse-serve"]
    listen = services[SERVE]["environment"]["SERVE_LISTEN"]
    assert [t for g in serve_job["static_configs"] for t in g["targets"]] == [
        f"{SERVE}:{listen.rpartition(':')[2]}"
    ]
    assert serve_job.get("metrics_path", "/metrics") == "/metrics"
    prometheus = services["prometheus"]
    _, binds = named_and_bind_mounts(prometheus)
    assert binds["/etc/prometheus"] == "./prometheus"
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    in_container = Path(config_flag.split("=", 1)[1])
    host = DOCKER / "prometheus" / in_container.relative_to("/etc/prometheus")
    assert host.resolve() == PROMETHEUS_CONFIG_PATH
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG_PATH.parent / rule_file).is_file(), rule_file


def test_grafana_mounts_its_provisioning_and_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    _, binds = named_and_bind_mounts(grafana)
    assert (DOCKER / binds["/etc/grafana/provisioning"]).resolve() == GRAFANA_PROVISIONING

    def on_host(container_path: str) -> Path:
        mounted = [t for t in binds if container_path == t or container_path.startswith(t + "/")]
        assert mounted, f"{container_path} is not mounted"
        target = max(mounted, key=len)
        return DOCKER / binds[target] / Path(container_path).relative_to(target)

    dashboards = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "dashboards.yaml").read_text(encoding="utf-8")
    )
    for provider in dashboards["providers"]:
        folder = on_host(provider["options"]["path"])
        assert folder.is_dir() and any(folder.glob("*.json")), folder
    datasources_text = (GRAFANA_PROVISIONING / "datasources" / "datasources.yaml").read_text(
        encoding="utf-8"
    )
    environment = grafana["environment"]
    for variable in set(re.findall(r"\$\{([A-Z_]+)\}", datasources_text)):
        assert variable in environment, f"datasources.yaml reads {variable}"
    sources = yaml.safe_load(datasources_text)["datasources"]
    (clickhouse,) = [s for s in sources if s["type"] == "grafana-clickhouse-datasource"]
    assert clickhouse["jsonData"]["host"] in services
    assert re.fullmatch(
        r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", environment["GF_PLUGINS_PREINSTALL_SYNC"]
    )
    for source in sources:
        if "url" in source:
            assert source["url"].split("//")[1].split(":")[0] in services, source["url"]
    assert {"prometheus", "clickhouse"} <= set(grafana["depends_on"])


def test_the_dashboards_redis_and_serve_row_shows_their_metrics_and_only_served_ones() -> None:
    # Registered on import: the flows' metrics (the Redis sink's among them) and serve's.
    importlib.import_module("waxhouse.connectors.metrics")
    importlib.import_module("waxhouse.serve.metrics")
    types = exposition_types(generate_latest(REGISTRY).decode())
    panels = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rows = [i for i, panel in enumerate(panels) if panel["type"] == "row"]
    (start,) = [i for i in rows if panels[i]["title"] == "Redis and serve"]
    end = min([i for i in rows if i > start], default=len(panels))
    row = panels[start + 1 : end]
    assert row and all(panel["targets"] for panel in row)
    used = {
        name
        for panel in row
        for target in panel["targets"]
        for name in promql_metric_names(target["expr"])
    }
    unserved = {name for name in used if served_family(name, types) is None}
    assert not unserved, f"no such metric on a flow's or serve's /metrics: {unserved}"
    assert {served_family(name, types) for name in used} == REDIS_AND_SERVE_METRICS
    # Below every other panel, each panel inside the grid.
    row_top = panels[start]["gridPos"]["y"]
    assert all(p["gridPos"]["y"] + p["gridPos"]["h"] <= row_top for p in panels[:start])
    for panel in row:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["gridPos"]["y"] > row_top, panel["title"]
