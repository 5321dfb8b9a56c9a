"""The deployment sections of docs/operating.md ("Docker Compose", "Kubernetes") say what
docker/ and k8s/ hold: commands, names, images, ports and sizes are read out of them and
compared with the files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OPERATING = (REPO / "docs" / "operating.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    start = OPERATING.index(f"\n## {title}\n")
    end = OPERATING.find("\n## ", start + 1)
    return OPERATING[start : end if end > 0 else None]


COMPOSE_DOC = section("Docker Compose")
K8S_DOC = section("Kubernetes")
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())


def k8s(path: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "k8s" / path).read_text())
    return doc


STATEFULSET = k8s("base/statefulset.yaml")
CONFIG = k8s("base/configmap.yaml")["data"]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL)


def joined(command: str) -> str:
    """A shell command with its line continuations and indentation folded into spaces."""
    return " ".join(command.replace("\\\n", " ").split())


@pytest.mark.parametrize("doc", [COMPOSE_DOC, K8S_DOC], ids=["compose", "kubernetes"])
def test_every_path_the_sections_name_exists(doc: str) -> None:
    paths = set(re.findall(r"\b((?:docker|k8s)/[\w./-]*[\w/])", doc))
    assert len(paths) >= 5
    paths -= {"docker/.env"}  # the user's copy of docker/.env.example, git-ignored
    for path in paths:
        assert (REPO / path).exists(), f"docs/operating.md names {path}, which does not exist"


def test_the_waxctl_command_is_the_one_deploy_sh_runs() -> None:
    script = (REPO / "k8s" / "waxctl" / "deploy.sh").read_text()
    in_script = re.search(r"^waxctl dataflow deploy .*?\"\$@\"$", script, re.DOTALL | re.M)
    in_doc = [b for b in code_blocks(K8S_DOC) if b.startswith("waxctl dataflow deploy")]
    assert in_script and len(in_doc) == 1
    assert joined(in_doc[0]) == joined(in_script.group(0))


def test_the_compose_table_lists_every_service_with_its_image() -> None:
    rows = re.findall(r"^\| `([\w-]+)` \| `([^`]+)`", COMPOSE_DOC, re.M)
    assert {name for name, _ in rows} == set(COMPOSE["services"])
    for name, image in rows:
        assert COMPOSE["services"][name]["image"] == image, name


def test_compose_commands_name_real_services_and_ports() -> None:
    commands = " ".join(joined(b) for b in code_blocks(COMPOSE_DOC))
    for service in re.findall(
        r"compose -f docker/compose.yaml (?:run --rm --no-deps|exec) ([\w-]+)", commands
    ):
        assert service in COMPOSE["services"], service
    published = {
        int(port.split(":")[1])
        for service in COMPOSE["services"].values()
        for port in service.get("ports", [])
    }
    for port in re.findall(r"localhost:(\d+)", COMPOSE_DOC):
        assert int(port) in published, f"the docs send users to port {port}, not published"
    assert COMPOSE["services"]["loadgen"]["command"][-1] == "${LOADGEN_RATE:-500}"
    assert "(500 events/s)" in COMPOSE_DOC


def test_kubernetes_names_match_the_manifests() -> None:
    namespace = k8s("base/kustomization.yaml")["namespace"]
    assert f"in namespace\n`{namespace}`" in K8S_DOC or f"namespace `{namespace}`" in K8S_DOC
    commands = " ".join(joined(b) for b in code_blocks(K8S_DOC))
    assert f"kubectl create namespace {namespace}" in commands
    for flag in re.findall(r"kubectl -n (\S+)", commands):
        assert flag == namespace
    container = STATEFULSET["spec"]["template"]["spec"]["containers"][0]
    (secret,) = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    assert f"create secret generic {secret}" in commands
    secret_keys = set(k8s("base/secret.example.yaml")["stringData"])
    named = set(re.findall(r"`(CLICKHOUSE_URL|KAFKA_SASL_\w+)`", K8S_DOC.split("```")[0]))
    assert named == secret_keys
    job = k8s("base/schema-job.yaml")["metadata"]["name"]
    assert f"logs job/{job}" in commands
    labels = STATEFULSET["spec"]["template"]["metadata"]["labels"]
    for key, value in re.findall(r"get pods -l ([\w./-]+)=([\w-]+)", commands):
        assert labels.get(key) == value


def test_kubernetes_sizes_and_cluster_shape_match_the_statefulset() -> None:
    spec = STATEFULSET["spec"]
    container = spec["template"]["spec"]["containers"][0]
    replicas = spec["replicas"]
    assert f"{replicas}-process Bytewax cluster" in K8S_DOC
    assert f"--processes {replicas}" in K8S_DOC
    assert len(CONFIG["BYTEWAX_ADDRESSES"].split(";")) == replicas
    assert f"{replicas} replicas" in K8S_DOC
    resources = container["resources"]
    said = re.search(r"requests (\S+) CPU / (\d+) GiB and limits (\S+) CPU / (\d+) GiB", K8S_DOC)
    assert said, "docs/operating.md states requests and limits"
    assert said.groups() == (
        resources["requests"]["cpu"],
        resources["requests"]["memory"].removesuffix("Gi"),
        resources["limits"]["cpu"],
        resources["limits"]["memory"].removesuffix("Gi"),
    )
    (claim,) = spec["volumeClaimTemplates"]
    assert f"({claim['spec']['resources']['requests']['storage'].replace('Gi', ' Gi')}," in K8S_DOC
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"ports `cluster` {ports['cluster']} and `api` {ports['api']}" in K8S_DOC
    assert (
        f"user {STATEFULSET['spec']['template']['spec']['securityContext']['runAsUser']}" in K8S_DOC
    )
    pattern = "clickstream-<i>.clickstream.waxhouse.svc.cluster.local:9999"
    assert pattern in K8S_DOC
    for i, address in enumerate(CONFIG["BYTEWAX_ADDRESSES"].split(";")):
        assert address == pattern.replace("<i>", str(i))
