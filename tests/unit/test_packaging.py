"""One import package, imports that point one way, no cycles.

`pip install` must put exactly one top-level import package in place, `waxhouse`: a user's
project has its own `dataflows/` (and maybe `connectors/`), and ours must not shadow them.
Inside it, every module belongs to one layer and imports only from its own layer or the
ones below it: pure core <- connectors <- pipeline assembly <- flows and CLI.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE, CONNECTORS, ASSEMBLY, TOP = range(4)
LAYER_NAMES = ("core", "connectors", "assembly", "flows and CLI")

# Every module of the library, by layer. A new module must be placed here: the test fails
# on one it does not know.
LAYERS: dict[str, int] = {
    "waxhouse.errors": CORE,
    "waxhouse.logs": CORE,
    "waxhouse.runargs": CORE,
    "waxhouse.settings": CORE,
    "waxhouse.records": CORE,
    "waxhouse.rows": CORE,
    "waxhouse.fields": CORE,
    "waxhouse.aggregates": CORE,
    "waxhouse.tables": CORE,
    "waxhouse.windows": CORE,
    "waxhouse.segments": CORE,
    "waxhouse.dedup": CORE,
    "waxhouse.engine": CORE,
    "waxhouse.snapshots": CORE,
    "waxhouse.joins": CORE,
    "waxhouse.pipeline": CORE,
    "waxhouse.views": CORE,
    "waxhouse.livetables": CORE,
    "waxhouse.testing": CORE,
    "waxhouse.dataflow": ASSEMBLY,
    "waxhouse.recovery": ASSEMBLY,
    "waxhouse.stopping": ASSEMBLY,
    "waxhouse.runtime": ASSEMBLY,
    "waxhouse.report": ASSEMBLY,
    "waxhouse.monitoring": ASSEMBLY,
    # The gateway: pure request handling in the core, Kafka and HTTP above the connectors.
    "waxhouse.gateway.body": CORE,
    "waxhouse.gateway.limits": CORE,
    "waxhouse.gateway.routes": CORE,
    "waxhouse.gateway.metrics": CORE,
    "waxhouse.gateway": ASSEMBLY,
    "waxhouse.gateway.producer": ASSEMBLY,
    "waxhouse.gateway.server": ASSEMBLY,
    "waxhouse.gateway.answers": ASSEMBLY,
    # Autoscaling: the model is pure; reading metrics and running processes are I/O.
    "waxhouse.autoscale": CORE,
    "waxhouse.autoscale.model": CORE,
    "waxhouse.autoscale.metrics": ASSEMBLY,
    "waxhouse.autoscale.local": ASSEMBLY,
    "waxhouse.autoscale.kubernetes": ASSEMBLY,
    "waxhouse.autoscale.run": ASSEMBLY,
    # Live results: the server over any reader, and the flow's own in-process store.
    "waxhouse.serve.embedded": ASSEMBLY,
    "waxhouse.serve.metrics": CORE,
    "waxhouse.serve": ASSEMBLY,
    "waxhouse.serve.store": ASSEMBLY,
    "waxhouse.serve.history": ASSEMBLY,
    "waxhouse.serve.fanout": ASSEMBLY,
    "waxhouse.serve.server": ASSEMBLY,
    "waxhouse.cli": TOP,
    # The package itself is the public facade: the core's names, and `flow` on first use.
    "waxhouse": TOP,
}


def layer(module: str) -> int:
    if module.startswith("waxhouse.connectors"):
        return CONNECTORS
    if module.startswith("dataflows"):
        return TOP
    if module not in LAYERS:
        raise AssertionError(f"{module}: not placed in a layer (tests/unit/test_packaging.py)")
    return LAYERS[module]


def module_files() -> dict[str, Path]:
    """Every project module by its import name: the library as installed (`connectors/` as
    `waxhouse.connectors`), and the flows."""
    found: dict[str, Path] = {}
    for root, prefix in ((REPO / "waxhouse", "waxhouse"), (REPO / "dataflows", "dataflows")):
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports, anywhere in its file (also inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from waxhouse import fields` imports the module waxhouse.fields; the package
            # itself only when a name is not a module of it.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            if top in ("connectors",) or (
                top == "dataflows" and not module.startswith("dataflows")
            ):
                found.add(name)  # never resolvable once installed: reported below
            elif name in known:
                found.add(name)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def test_the_library_imports_neither_connectors_nor_dataflows_as_top_level_packages() -> None:
    wrong = {
        module: sorted(name for name in imported if name.partition(".")[0] != "waxhouse")
        for module, imported in import_graph().items()
        if not module.startswith("dataflows")
    }
    assert {m: names for m, names in wrong.items() if names} == {}


def test_imports_point_from_flows_and_cli_down_to_the_core() -> None:
    upward = [
        f"{module} ({LAYER_NAMES[layer(module)]}) imports {name} ({LAYER_NAMES[layer(name)]})"
        for module, imported in sorted(import_graph().items())
        for name in sorted(imported)
        if name.partition(".")[0] in ("waxhouse", "dataflows") and layer(name) > layer(module)
    ]
    assert upward == []


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    cycles = [cycle for cycle in _cycles(graph)]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    """What `pip install .` puts in site-packages: built here without network access, from
    a copy (setuptools leaves a build/ directory behind in the tree it builds)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("waxhouse", "connectors", "dataflows"):
        shutil.copytree(
            REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("waxhouse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.partition("/")[0] for name in names if ".dist-info/" not in name}
    assert tops == {"waxhouse"}
    assert "waxhouse/connectors/kafka.py" in names
    assert any(
        name.startswith("waxhouse/connectors/sql/") and name.endswith(".sql") for name in names
    )
    assert not any(name.startswith("waxhouse/dataflows") for name in names)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_every_placed_module_exists(module: str) -> None:
    assert module in module_files(), f"{module} is placed in a layer but does not exist"
