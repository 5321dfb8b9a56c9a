"""k8s/: every kustomization builds and passes the Kubernetes 1.34 API schemas, the Bytewax
cluster it describes is consistent (the same rules `python -m bytewax.run` applies), and
the waxctl deployment (k8s/waxctl) asks for the same cluster as the plain manifests.

No cluster is needed: kustomize builds offline (tests/support/kustomize.py finds or
installs it), kubernetes-validate ships the API schemas, and waxctl, which cannot run here,
is replaced by a stand-in that records the command line k8s/waxctl/deploy.sh gives it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import runpy
import subprocess
import sys
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.kustomize import build
from waxhouse.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUSTOMIZATIONS = (
    "base",
    "overlays/replicated-clickhouse",
    "overlays/shared-recovery",
    "overlays/sensors",
    "gateway",
    "redis",
    "serve",
    "monitoring",
    "autoscaling",
)
KUBERNETES_VERSION = "1.34.0"
NAMESPACE = "waxhouse"
SECRET = "waxhouse-credentials"
FLOW_CONTAINER = "clickstream"
GATEWAY = "gateway"  # k8s/gateway: Deployment, Service, HPA and budget of this name
GATEWAY_TOKENS_SECRET = "waxhouse-gateway-tokens"
AUTOSCALER_ACCOUNT = "waxhouse-autoscaler"  # k8s/autoscaling: its ServiceAccount and Role
SERVE = "serve"  # k8s/serve: Deployment, Service and budget of this name
SERVE_TOKENS_SECRET = "waxhouse-serve-tokens"
REDIS = "redis"  # k8s/redis: StatefulSet and Service of this name
REDIS_IMAGE = re.compile(r"redis:\d+\.\d+\.\d+-alpine")  # not the waxhouse image

# Kinds that are not built into Kubernetes (their schemas come with their operators), and
# kustomize's own files: checked by structure instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
# YAML files under k8s/ that are not Kubernetes objects.
NOT_OBJECTS = {K8S / "waxctl" / "values.yaml"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}

# Keys the flow must never get from a ConfigMap or a command line. Not secrets: a `_FILE`
# key, the path of a mounted secret (GATEWAY_TOKENS_FILE), and a limit `PER_TOKEN`.
SECRET_KEY = re.compile(r"^CLICKHOUSE_URL$|PASSWORD|USERNAME|SECRET|(?<!PER_)TOKEN(?!S?_FILE$)")
# The settings module reads the environment as `_text(env, "NAME")`, `_int(env, "NAME", …)`,
# and a pair `PREFIX_TOKENS` / `PREFIX_TOKENS_FILE` as `_tokens(env, "PREFIX")` (or
# `_tokens(env)`, its signature's default prefix).
SETTING_READ = re.compile(r"\(\s*env\s*,\s*\"([A-Z][A-Z0-9_]*)\"")
TOKENS_READ = re.compile(r"_tokens\(\s*env\s*(?:,\s*\"([A-Z]+)\")?\s*\)")
TOKENS_DEFAULT = re.compile(r"def _tokens\([^)]*prefix: str = \"([A-Z]+)\"")

# `waxctl df deploy --help` (Waxctl Pro 0.12.0), as printed in Bytewax's
# docs/guide/deployment/waxctl.md (github.com/bytewax/bytewax): long name -> (short name,
# value type). "strings" is a list flag: repeatable, each value split as one CSV record.
WAXCTL_DEPLOY_FLAGS: dict[str, tuple[str | None, str]] = {
    "chart-values-file": ("V", "string"),
    "create-namespace": (None, "bool"),
    "dry-run": (None, "bool"),
    "environment-variables": ("e", "strings"),
    "help": ("h", "bool"),
    "image-pull-policy": ("l", "string"),
    "image-pull-secret": ("s", "string"),
    "image-repository": ("i", "string"),
    "image-tag": ("t", "string"),
    "job-mode": (None, "bool"),
    "keep-alive": (None, "bool"),
    "name": ("N", "string"),
    "namespace": ("n", "string"),
    "output-format": ("o", "string"),
    "platform": (None, "bool"),
    "processes": ("p", "int"),
    "python-file-name": ("f", "string"),
    "recovery": (None, "bool"),
    "recovery-backup": (None, "bool"),
    "recovery-backup-interval": (None, "int"),
    "recovery-backup-s3-aws-access-key-id": (None, "string"),
    "recovery-backup-s3-aws-secret-access-key": (None, "string"),
    "recovery-backup-s3-k8s-secret": (None, "string"),
    "recovery-backup-s3-url": (None, "string"),
    "recovery-parts": (None, "int"),
    "recovery-single-volume": (None, "bool"),
    "recovery-size": (None, "string"),
    "recovery-snapshot-interval": (None, "int"),
    "recovery-storageclass": (None, "string"),
    "requirements-file-name": ("r", "string"),
    "values": ("v", "string"),
    "workers": ("w", "int"),
    "yes": (None, "bool"),
    "debug": (None, "bool"),  # global
}
# Flags that would deploy something else than k8s/base: a Job, one volume shared by all
# pods (ReadWriteOnce: they could not all mount it), a container kept alive after the flow.
WAXCTL_EXCLUDED = {"job-mode", "recovery-single-volume", "keep-alive", "platform"}

# Bytewax's Helm chart (github.com/bytewax/helm-charts, charts/bytewax): the top-level keys
# of values.yaml, the labels templates/statefulset.yaml gives the pods (podLabels must not
# repeat them), and its container's port names (`process` = service.port, `api` = api.port).
CHART_VALUES = {
    "image", "imagePullSecrets", "serviceAccount", "extraLabels", "podLabels",
    "podAnnotations", "podSecurityContext", "containerName", "securityContext", "service",
    "api", "resources", "nodeSelector", "tolerations", "affinity", "env", "envValueFrom",
    "envFromSecret", "envRenderSecret", "envFromSecrets", "extraSecretMounts",
    "extraVolumeMounts", "configuration", "customOtlpUrl", "opentelemetry-collector",
    "jaeger", "kubePrometheusStack", "podMonitor",
}  # fmt: skip
CHART_NESTED_VALUES = {
    "service": {"port"},
    "api": {"enabled", "port", "cacheport"},
    "configuration": {
        "pythonFileName", "processesCount", "workersPerProcess", "keepAlive", "jobMode",
        "configMap", "recovery",
    },
}  # fmt: skip
CHART_RECOVERY_VALUES = {
    "enabled",
    "partsCount",
    "snapshotInterval",
    "backupInterval",
    "persistence",
}
CHART_POD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "bytewax.io/dataflow-info",
}
CHART_PORTS = {"process": ("service", "port"), "api": ("api", "port")}


# ---------------------------------------------------------------- building and reading


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: build(K8S / name) for name in KUSTOMIZATIONS}


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    if resource["kind"] == "Pod":
        return resource["spec"]
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return resource["spec"]["template"]["spec"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        assert operator in ("In", "NotIn"), operator
        if (labels.get(key) in expression["values"]) != (operator == "In"):
            return False
    return True


def pod_labels(resource: dict[str, Any]) -> dict[str, str]:
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return resource["spec"]["template"]["metadata"]["labels"]


def workloads(built: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resources in built.items():
        for resource in resources:
            if resource["kind"] in WORKLOAD_KINDS:
                yield f"{name}: {resource['kind']}/{resource['metadata']['name']}", resource


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def flow_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec(statefulset)["containers"] if c["name"] == FLOW_CONTAINER)


def schema_error(obj: dict[str, Any]) -> str | None:
    """Why `obj` fails the Kubernetes API schema (strict: no unknown fields), or None."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {where}: {e.message}"
    return None


def check_custom(obj: dict[str, Any]) -> None:
    """A custom resource: the fields every object needs, and a spec."""
    assert (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS, obj.get("kind")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"])
    assert isinstance(obj.get("spec"), dict) and obj["spec"], f"{obj['kind']} without a spec"


def settings_names() -> set[str]:
    """The environment variables waxhouse/settings.py reads."""
    source = (REPO / "waxhouse" / "settings.py").read_text()
    names = set(SETTING_READ.findall(source))
    default = TOKENS_DEFAULT.search(source)
    for prefix in TOKENS_READ.findall(source):
        prefix = prefix or (default.group(1) if default else "")
        if prefix:
            names |= {f"{prefix}_TOKENS", f"{prefix}_TOKENS_FILE"}
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "WINDOW_SECONDS"} <= names, names
    return names


def is_known_setting(name: str, known: set[str]) -> bool:
    return name in known or name.startswith("BYTEWAX_")


def quantity(value: str | int) -> Decimal:
    """A Kubernetes quantity (`500m`, `2`, `128Mi`, `10Gi`) as a number."""
    units = {"m": Decimal("0.001"), "": Decimal(1), "k": Decimal(10**3), "M": Decimal(10**6)}
    units |= {"G": Decimal(10**9), "Ki": Decimal(2**10), "Mi": Decimal(2**20)}
    units |= {"Gi": Decimal(2**30), "Ti": Decimal(2**40)}
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value))
    assert match and match[2] in units, f"not a quantity: {value!r}"
    return Decimal(match[1]) * units[match[2]]


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_built_resource_passes_its_schema(
    built: dict[str, list[dict[str, Any]]], name: str
) -> None:
    resources = built[name]
    assert resources, f"k8s/{name} builds nothing"
    errors = []
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == NAMESPACE, resource["metadata"]
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            check_custom(resource)
        elif (error := schema_error(resource)) is not None:
            errors.append(error)
    assert not errors, "\n".join(errors)


def kustomization_files() -> dict[Path, dict[str, Any]]:
    return {
        path: yaml.safe_load(path.read_text()) for path in sorted(K8S.rglob("kustomization.yaml"))
    }


def patch_files() -> set[Path]:
    patches = set()
    for path, kustomization in kustomization_files().items():
        for patch in kustomization.get("patches", []):
            if "path" in patch:
                patches.add((path.parent / patch["path"]).resolve())
        for patch in kustomization.get("patchesStrategicMerge", []):
            patches.add((path.parent / patch).resolve())
    return patches


def test_every_yaml_file_under_k8s_is_a_valid_object() -> None:
    """Including those no kustomization lists (secret.example.yaml, examples)."""
    patches = patch_files()
    errors = []
    checked = 0
    for path in sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")]):
        if path in NOT_OBJECTS or path.resolve() in patches:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, (
                f"{path.relative_to(REPO)}: not a Kubernetes object"
            )
            if doc["kind"] in KUSTOMIZE_KINDS:
                continue
            checked += 1
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                check_custom(doc)
            elif (error := schema_error(doc)) is not None:
                errors.append(f"{path.relative_to(REPO)}: {error}")
    assert not errors, "\n".join(errors)
    assert checked >= 10


def test_examples_are_never_applied() -> None:
    """Templates with placeholder credentials stay out of every kustomization."""
    for path, kustomization in kustomization_files().items():
        for entry in kustomization.get("resources", []):
            assert ".example." not in entry, f"{path.relative_to(REPO)} lists {entry}"
            target = path.parent / entry
            assert target.exists(), f"{path.relative_to(REPO)}: {entry} does not exist"
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    assert secret["metadata"]["namespace"] == NAMESPACE


# ---------------------------------------------------------------- the Bytewax cluster


@pytest.fixture(scope="module")
def base(built: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return built["base"]


@pytest.fixture(scope="module")
def statefulset(base: list[dict[str, Any]]) -> dict[str, Any]:
    return find(base, "StatefulSet")


@pytest.fixture(scope="module")
def config(base: list[dict[str, Any]], statefulset: dict[str, Any]) -> dict[str, str]:
    """The data of the ConfigMap the flow's container reads its environment from."""
    names = [
        source["configMapRef"]["name"]
        for source in flow_container(statefulset).get("envFrom", [])
        if "configMapRef" in source
    ]
    assert len(names) == 1, names
    return find(base, "ConfigMap", names[0])["data"]


def test_addresses_name_every_pod_in_process_id_order(
    base: list[dict[str, Any]], statefulset: dict[str, Any], config: dict[str, str]
) -> None:
    addresses = config["BYTEWAX_ADDRESSES"].split(";")
    assert statefulset["spec"]["replicas"] == len(addresses)
    service = find(base, "Service", statefulset["spec"]["serviceName"])
    cluster_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "cluster")
    name, namespace = statefulset["metadata"]["name"], statefulset["metadata"]["namespace"]
    assert addresses == [
        f"{name}-{i}.{service['metadata']['name']}.{namespace}.svc.cluster.local:{cluster_port}"
        for i in range(len(addresses))
    ]
    assert config["BYTEWAX_STATEFULSET_NAME"] == name


def test_each_pod_is_the_process_its_address_names(
    statefulset: dict[str, Any], config: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytewax's own argument parsing, in each pod's environment, and the flow's choice of
    the recovery partition that pod's volume holds: together they cover every partition."""
    from bytewax.run import _parse_args

    from waxhouse.recovery import RecoveryPartition, own_partition

    env = flow_container(statefulset).get("env", [])
    assert any(
        e["name"] == "BYTEWAX_POD_NAME"
        and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
        for e in env
    ), "BYTEWAX_POD_NAME must be the pod's name (the process id comes from its ordinal)"
    for key in [k for k in os.environ if k.startswith("BYTEWAX_")]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    replicas = statefulset["spec"]["replicas"]
    partitions = []
    for ordinal in range(replicas):
        monkeypatch.setenv("BYTEWAX_POD_NAME", f"{statefulset['metadata']['name']}-{ordinal}")
        monkeypatch.setattr(sys, "argv", ["bytewax.run", "dataflows.clickstream"])
        args = vars(_parse_args())
        assert args["process_id"] == ordinal
        address = args["addresses"].split(";")[ordinal]
        assert address.startswith(f"{os.environ['BYTEWAX_POD_NAME']}.")
        assert args["workers_per_process"] == 1
        assert args["recovery_directory"] is not None, "recovery is off"
        partitions.append(own_partition(args))
    assert partitions == [RecoveryPartition(index=i, count=replicas) for i in range(replicas)]


def test_headless_service_resolves_pods_before_they_are_ready(
    base: list[dict[str, Any]], statefulset: dict[str, Any]
) -> None:
    service = find(base, "Service", statefulset["spec"]["serviceName"])
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["selector"].items() <= pod_labels(statefulset).items()
    assert spec["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p["containerPort"] for p in flow_container(statefulset)["ports"]}
    for port in spec["ports"]:
        assert ports[port["targetPort"]] == port["port"], port


def test_pods_start_together(statefulset: dict[str, Any]) -> None:
    # OrderedReady would wait for pod 0 to be ready, which waits for its peers.
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels(statefulset).items()


def test_recovery_directory_is_each_pods_own_volume(
    statefulset: dict[str, Any], config: dict[str, str]
) -> None:
    for key in ("BYTEWAX_RECOVERY_DIRECTORY", "BYTEWAX_SNAPSHOT_INTERVAL"):
        assert config.get(key), f"{key} unset: recovery needs it"
    assert config.get("BYTEWAX_RECOVERY_BACKUP_INTERVAL", "") != "", "backup interval unset"
    mounts = {m["mountPath"]: m["name"] for m in flow_container(statefulset)["volumeMounts"]}
    volume = mounts.get(config["BYTEWAX_RECOVERY_DIRECTORY"])
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert volume in claims, f"{config['BYTEWAX_RECOVERY_DIRECTORY']} is not a claimed volume"
    assert claims[volume]["spec"]["accessModes"] == ["ReadWriteOnce"]
    retention = statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_metrics_endpoint_is_served_where_it_is_probed_and_scraped(
    built: dict[str, list[dict[str, Any]]], statefulset: dict[str, Any], config: dict[str, str]
) -> None:
    assert config["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    container = flow_container(statefulset)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["api"] == int(config["BYTEWAX_DATAFLOW_API_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "api"}, probe
    # The API server writes dataflow.json there at start: it must be a writable volume.
    scratch = {v["name"] for v in pod_spec(statefulset)["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in scratch}
    assert config["BYTEWAX_DATAFLOW_API_CACHE_PATH"] in writable
    monitor = find(built["monitoring"], "PodMonitor", "waxhouse")
    assert monitor["metadata"]["namespace"] == statefulset["metadata"]["namespace"]
    assert selects(monitor["spec"]["selector"], pod_labels(statefulset))
    sensors = find(built["overlays/sensors"], "StatefulSet", "sensors")
    assert selects(monitor["spec"]["selector"], pod_labels(sensors))  # both flows, one job
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": "waxhouse"} in relabel  # the alerts' job
    rule = find(built["monitoring"], "PrometheusRule")
    assert rule["spec"]["groups"] and all(g["rules"] for g in rule["spec"]["groups"])


def test_disruption_budget_and_spreading_select_the_flows_pods(
    base: list[dict[str, Any]], statefulset: dict[str, Any]
) -> None:
    budget = find(base, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(statefulset).items()
    assert budget["spec"]["maxUnavailable"] in (0, 1)
    anti = pod_spec(statefulset)["affinity"]["podAntiAffinity"]
    for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels(statefulset).items()


# ---------------------------------------------------------------- configuration


def test_configuration_names_settings_the_flow_reads(
    statefulset: dict[str, Any], config: dict[str, str]
) -> None:
    known = settings_names()
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    names = [
        *config,
        *secret["stringData"],
        *(e["name"] for e in flow_container(statefulset)["env"]),
    ]
    unknown = [n for n in names if not is_known_setting(n, known)]
    assert not unknown, f"not read by waxhouse/settings.py: {unknown}"


def test_secrets_come_from_the_secret_only(built: dict[str, list[dict[str, Any]]]) -> None:
    for name, resources in built.items():
        for resource in resources:
            if resource["kind"] == "ConfigMap":
                leaked = [k for k in resource["data"] if SECRET_KEY.search(k)]
                assert not leaked, f"{name}: ConfigMap {resource['metadata']['name']}: {leaked}"
            assert resource["kind"] != "Secret", f"{name} builds a Secret: never commit one"
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert all(SECRET_KEY.search(k) for k in secret["stringData"])
    for where, workload in workloads(built):
        for container in containers(pod_spec(workload)):
            literal = [e["name"] for e in container.get("env", []) if SECRET_KEY.search(e["name"])]
            assert not literal, f"{where}: {literal} set in the manifest"
            refs = [
                s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s
            ]
            # Redis (k8s/redis) and the autoscaler (it reads metrics and the API only)
            # need no credentials of ours; every other waxhouse process reads the one Secret.
            keyless = REDIS_IMAGE.fullmatch(container["image"]) or container["name"] == "autoscaler"
            wanted = [] if keyless else [SECRET]
            assert refs == wanted, f"{where}: {container['name']} reads secrets {refs}"


def test_flow_waits_for_the_schema_the_job_applies(
    built: dict[str, list[dict[str, Any]]], config: dict[str, str]
) -> None:
    assert config["CLICKHOUSE_CREATE_SCHEMA"] == "false"
    assert config["KAFKA_CLIENT"] == "confluent"
    single = find(built["base"], "Job", "waxhouse-schema")
    assert pod_spec(single)["containers"][0]["args"] == ["waxhouse", "schema"]
    replicated = find(built["overlays/replicated-clickhouse"], "Job", "waxhouse-schema")
    args = pod_spec(replicated)["containers"][0]["args"]
    assert args[:3] == ["waxhouse", "schema", "--replicated"], args
    cluster = args[args.index("--cluster") + 1]
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", cluster), f"no cluster name: {args}"


def test_replicated_overlay_changes_only_the_schema_job(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    def others(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in resources if r["kind"] != "Job"]

    assert others(built["overlays/replicated-clickhouse"]) == others(built["base"])


def test_shared_recovery_overlay_mounts_one_shared_volume_and_changes_nothing_else(
    built: dict[str, list[dict[str, Any]]], config: dict[str, str]
) -> None:
    shared = built["overlays/shared-recovery"]
    claim = find(shared, "PersistentVolumeClaim", "waxhouse-recovery")
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    statefulset = find(shared, "StatefulSet", "clickstream")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    mounts = {m["mountPath"]: m["name"] for m in flow_container(statefulset)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    recovery = volumes[mounts[config["BYTEWAX_RECOVERY_DIRECTORY"]]]
    assert recovery["persistentVolumeClaim"]["claimName"] == "waxhouse-recovery"

    def without_recovery(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for resource in resources:
            if resource["kind"] == "PersistentVolumeClaim":
                continue
            if resource["kind"] == "StatefulSet":
                resource = json.loads(json.dumps(resource))
                resource["spec"].pop("volumeClaimTemplates", None)
                spec = pod_spec(resource)
                spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "recovery"]
            kept.append(resource)
        return kept

    assert without_recovery(shared) == without_recovery(built["base"])


# ---------------------------------------------------------------- workloads


def test_every_container_runs_locked_down(built: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for where, workload in workloads(built):
        spec = pod_spec(workload)
        for container in containers(spec):
            assert_locked_down(spec.get("securityContext", {}), container, where)
            checked += 1
        # Only the autoscaler calls the API, as its own ServiceAccount (rbac.yaml).
        calls_api = spec.get("serviceAccountName") == AUTOSCALER_ACCOUNT
        assert spec.get("automountServiceAccountToken") is calls_api, where
    assert checked >= 3


def assert_locked_down(pod: dict[str, Any], container: dict[str, Any], where: str) -> None:
    context = container.get("securityContext", {})

    def effective(key: str) -> Any:
        return context.get(key, pod.get(key))

    name = f"{where}: container {container['name']}"
    assert effective("runAsNonRoot") is True, name
    assert isinstance(effective("runAsUser"), int) and effective("runAsUser") > 0, name
    assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", name
    assert context.get("allowPrivilegeEscalation") is False, name
    assert context.get("readOnlyRootFilesystem") is True, name
    assert "ALL" in context.get("capabilities", {}).get("drop", []), name
    assert not context.get("capabilities", {}).get("add"), name
    assert context.get("privileged") is not True, name


def test_every_container_has_requests_and_limits(built: dict[str, list[dict[str, Any]]]) -> None:
    for where, workload in workloads(built):
        for container in containers(pod_spec(workload)):
            assert_resources(container.get("resources", {}), f"{where}: {container['name']}")


def assert_resources(resources: dict[str, Any], where: str) -> None:
    for resource in ("cpu", "memory"):
        request = resources.get("requests", {}).get(resource)
        limit = resources.get("limits", {}).get(resource)
        assert request is not None and limit is not None, f"{where}: {resource} unbounded"
        assert quantity(request) <= quantity(limit), f"{where}: {resource} {request} > {limit}"


def is_pinned(image: str) -> bool:
    """A digest, or a tag other than `latest` (`registry:5000/name` has no tag)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_images_are_pinned(built: dict[str, list[dict[str, Any]]]) -> None:
    images = set()
    for where, workload in workloads(built):
        for container in containers(pod_spec(workload)):
            assert is_pinned(container["image"]), f"{where}: image {container['image']}"
            images.add(container["image"])
    redis = {image for image in images if REDIS_IMAGE.fullmatch(image)}
    assert len(redis) == 1, f"one Redis image: {redis}"
    waxhouse = images - redis
    assert len(waxhouse) == 1, f"one image for the flows, the Jobs, gateway and serve: {images}"


# ---------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def gateway(built: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return built["gateway"]


@pytest.fixture(scope="module")
def deployment(gateway: list[dict[str, Any]]) -> dict[str, Any]:
    return find(gateway, "Deployment", GATEWAY)


def gateway_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(deployment)["containers"]
    assert container["name"] == GATEWAY
    return container


def gateway_environment(
    built: dict[str, list[dict[str, Any]]], deployment: dict[str, Any]
) -> dict[str, str]:
    """The gateway's environment as its pods get it: the ConfigMaps it names in order (the
    base's, then its own) and the example Secret's keys, each later one winning."""
    env: dict[str, str] = {}
    everything = [r for resources in built.values() for r in resources]
    for source in gateway_container(deployment)["envFrom"]:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            maps = {r["metadata"]["name"]: r for r in everything if r["kind"] == "ConfigMap"}
            assert name in maps, f"the gateway reads ConfigMap {name}, which nothing creates"
            env.update(maps[name]["data"])
        else:
            assert source["secretRef"]["name"] == SECRET
            example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
            env.update({k: v for k, v in example["stringData"].items() if k != "CLICKHOUSE_URL"})
    return env


def test_gateway_is_a_stateless_deployment_that_an_hpa_scales_on_cpu(
    gateway: list[dict[str, Any]], deployment: dict[str, Any]
) -> None:
    # The HPA owns the replica count: a `replicas` field would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    hpa = find(gateway, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], "several replicas"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    target = metric["resource"]["target"]
    assert target["type"] == "Utilization" and 0 < target["averageUtilization"] < 100
    # Utilization is measured against the CPU request, so there must be one.
    assert quantity(gateway_container(deployment)["resources"]["requests"]["cpu"]) > 0
    # Stateless: nothing persistent is mounted, and a rollout never drops capacity.
    for volume in pod_spec(deployment)["volumes"]:
        assert volume.keys() & {"emptyDir", "secret"}, f"gateway volume {volume['name']}"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = find(gateway, "PodDisruptionBudget", GATEWAY)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    for constraint in spread:
        assert constraint["labelSelector"] == deployment["spec"]["selector"]


def test_gateway_is_probed_and_served_on_the_port_it_listens_on(
    built: dict[str, list[dict[str, Any]]],
    gateway: list[dict[str, Any]],
    deployment: dict[str, Any],
) -> None:
    container = gateway_container(deployment)
    assert container["args"] == ["waxhouse", "gateway"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    host, _, port = gateway_environment(built, deployment)["GATEWAY_LISTEN"].rpartition(":")
    assert host == "0.0.0.0", "the pod's address, not only its loopback"
    assert ports == {"http": int(port)}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for probe in ("startupProbe", "livenessProbe"):
        # Liveness is the process only: Kafka being down must not restart the gateway.
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    service = find(gateway, "Service", GATEWAY)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"].get("clusterIP") != "None", "one address that balances over pods"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitor = find(built["monitoring"], "PodMonitor", "waxhouse-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= pod_labels(find(built["base"], "StatefulSet")).items()
    ), "the gateway's PodMonitor would scrape the flow too"
    flows = find(built["monitoring"], "PodMonitor", "waxhouse")
    assert not selects(flows["spec"]["selector"], pod_labels(deployment)), "nor the other way"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "waxhouse-gateway"} in endpoint["relabelings"]
    rules = find(built["monitoring"], "PrometheusRule")
    alerts = {r.get("alert") for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {"GatewayErrors", "GatewayAckLatencyHigh"} <= alerts


def test_gateway_writes_the_topics_the_flows_read_with_their_kafka_settings(
    built: dict[str, list[dict[str, Any]]],
    deployment: dict[str, Any],
    config: dict[str, str],
    tmp_path: Path,
) -> None:
    from waxhouse.settings import load_settings

    env = gateway_environment(built, deployment)
    known = settings_names()
    unknown = [name for name in env if not is_known_setting(name, known)]
    assert not unknown, f"not read by waxhouse/settings.py: {unknown}"
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC"):
        assert env[name] == config[name], name
    sensors = find(built["overlays/sensors"], "ConfigMap", "waxhouse-sensors-config")["data"]
    assert env["SENSORS_TOPIC"] == sensors["SENSORS_TOPIC"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == sensors["KAFKA_BOOTSTRAP_SERVERS"]
    # A valid configuration, with the example Secret's tokens file where the pod has it.
    example = yaml.safe_load((K8S / "gateway" / "secret.example.yaml").read_text())
    (tokens,) = example["stringData"].values()
    (tmp_path / "tokens").write_text(tokens)
    settings = load_settings(env | {"GATEWAY_TOKENS_FILE": str(tmp_path / "tokens")}, gateway=True)
    assert settings.kafka_topic == config["KAFKA_TOPIC"]
    assert settings.sensors_topic == sensors["SENSORS_TOPIC"]
    assert settings.gateway.listen == env["GATEWAY_LISTEN"]
    assert settings.gateway.tokens == ("TOKEN",)
    assert (
        pod_spec(deployment)["serviceAccountName"]
        == find(built["base"], "ServiceAccount")["metadata"]["name"]
    )


def test_gateway_tokens_come_from_their_secret_as_a_read_only_file(
    built: dict[str, list[dict[str, Any]]], deployment: dict[str, Any]
) -> None:
    env = gateway_environment(built, deployment)
    assert "GATEWAY_TOKENS" not in env, "tokens as a file from the Secret, never a literal"
    path = Path(env["GATEWAY_TOKENS_FILE"])
    container = gateway_container(deployment)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["secretName"] == GATEWAY_TOKENS_SECRET
    (item,) = [i for i in secret["items"] if i["path"] == path.name]
    # Readable by the gateway's user: by everyone, or by the pod's fsGroup.
    mode = secret.get("defaultMode", 0o644)
    pod_security = pod_spec(deployment)["securityContext"]
    assert mode & 0o004 or (
        mode & 0o040 and pod_security.get("fsGroup") == pod_security["runAsGroup"]
    ), oct(mode)
    example = yaml.safe_load((K8S / "gateway" / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == GATEWAY_TOKENS_SECRET
    assert example["metadata"]["namespace"] == NAMESPACE
    assert list(example["stringData"]) == [item["key"]]
    assert not [r for r in built["gateway"] if r["kind"] == "Secret"]


# ---------------------------------------------------------------- waxctl


def run_deploy_script(tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """The arguments k8s/waxctl/deploy.sh gives waxctl (a stand-in records them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv"
    stand_in = bin_dir / "waxctl"
    stand_in.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\n")
    stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **(environ or {})}
    done = subprocess.run(
        ["bash", str(K8S / "waxctl" / "deploy.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return record.read_text().split("\0")[:-1]


def parse_waxctl(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`waxctl dataflow deploy` arguments as waxctl's flag parser reads them: the positional
    arguments, and each flag's values (by long name). Unknown flags fail the test."""
    assert argv[:2] == ["dataflow", "deploy"], argv[:2]
    short = {s: long for long, (s, _) in WAXCTL_DEPLOY_FLAGS.items() if s}
    positional: list[str] = []
    flags: dict[str, list[str]] = defaultdict(list)
    tokens = iter(argv[2:])
    for token in tokens:
        if token.startswith("--"):
            name, has_value, value = token[2:].partition("=")
        elif token.startswith("-") and len(token) > 1:
            assert token[1] in short, f"waxctl has no flag -{token[1]}"
            name, value = short[token[1]], token[2:]
            has_value = "=" if value else ""
        else:
            positional.append(token)
            continue
        assert name in WAXCTL_DEPLOY_FLAGS, f"waxctl has no flag --{name}"
        kind = WAXCTL_DEPLOY_FLAGS[name][1]
        if kind == "bool":
            value = value if has_value else "true"
        elif not has_value:
            value = next(tokens)
        if kind == "int":
            int(value)
        if kind == "strings":
            flags[name].extend(next(csv.reader([value])))
        else:
            flags[name].append(value)
    return positional, dict(flags)


@pytest.fixture(scope="module")
def waxctl(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """deploy.sh's positional arguments and single-valued flags, plus "env": -e pairs."""
    positional, flags = parse_waxctl(run_deploy_script(tmp_path_factory.mktemp("waxctl")))
    single = {}
    for name, values in flags.items():
        if name != "environment-variables":
            assert len(values) == 1, f"--{name} given {len(values)} times"
            single[name] = values[0]
    return positional, single


def waxctl_env(argv: list[str]) -> dict[str, str]:
    _, flags = parse_waxctl(argv)
    pairs = [pair.partition("=") for pair in flags.get("environment-variables", [])]
    assert all(sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key) for key, sep, _ in pairs), pairs
    env = {key: value for key, _, value in pairs}
    assert len(env) == len(pairs), "an -e variable given twice"
    return env


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "waxctl" / "values.yaml").read_text())


def test_waxctl_deploys_the_same_cluster(
    waxctl: tuple[list[str], dict[str, str]],
    statefulset: dict[str, Any],
    config: dict[str, str],
    values: dict[str, Any],
) -> None:
    positional, flags = waxctl
    assert positional == ["clickstream.py"]
    assert not WAXCTL_EXCLUDED & flags.keys(), WAXCTL_EXCLUDED & flags.keys()
    replicas = statefulset["spec"]["replicas"]
    container = flow_container(statefulset)
    storage = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert flags == {
        "name": statefulset["metadata"]["name"],
        "namespace": statefulset["metadata"]["namespace"],
        "processes": str(replicas),
        "workers": config["BYTEWAX_WORKERS_PER_PROCESS"],
        "image-repository": container["image"].rpartition(":")[0],
        "image-tag": container["image"].rpartition(":")[2],
        "image-pull-policy": container["imagePullPolicy"],
        "recovery": "true",
        "recovery-parts": str(replicas),  # one partition per process, as in k8s/base
        "recovery-snapshot-interval": config["BYTEWAX_SNAPSHOT_INTERVAL"],
        "recovery-backup-interval": config["BYTEWAX_RECOVERY_BACKUP_INTERVAL"],
        "recovery-size": storage["storage"],
        "chart-values-file": "values.yaml",
    }
    assert values["configuration"]["recovery"]["backupInterval"] == int(
        config["BYTEWAX_RECOVERY_BACKUP_INTERVAL"]
    )


def test_waxctl_ships_the_flow() -> None:
    import dataflows.clickstream

    namespace = runpy.run_path(str(K8S / "waxctl" / "clickstream.py"))
    assert namespace["flow"] is dataflows.clickstream.flow


def test_waxctl_passes_the_same_flow_configuration(tmp_path: Path, config: dict[str, str]) -> None:
    env = waxctl_env(run_deploy_script(tmp_path))
    flow_config = {k: v for k, v in config.items() if not k.startswith("BYTEWAX_")}
    # The one intended difference: without a schema Job, the flow creates its tables.
    assert env.pop("CLICKHOUSE_CREATE_SCHEMA") == "true"
    assert flow_config.pop("CLICKHOUSE_CREATE_SCHEMA") == "false"
    assert env == flow_config
    unknown = [n for n in env if not is_known_setting(n, settings_names())]
    assert not unknown, unknown


def test_waxctl_keeps_secrets_off_the_command_line_and_commas_in_values(tmp_path: Path) -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "user",
        "KAFKA_SASL_PASSWORD": 'pa,ss"word',
        "CLICKHOUSE_URL": "https://u:secret@ch:8443/db",
        "WAXHOUSE_IMAGE_REPOSITORY": "registry.example.com/team/waxhouse",
        "WAXHOUSE_RECOVERY_STORAGECLASS": "fast-ssd",
    }
    argv = run_deploy_script(tmp_path, environ)
    env = waxctl_env(argv)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "b1:9092,b2:9092"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert not [k for k in env if SECRET_KEY.search(k)]
    assert not [a for a in argv if "secret" in a or "pa,ss" in a]
    _, flags = parse_waxctl(argv)
    assert flags["image-repository"] == ["registry.example.com/team/waxhouse"]
    assert flags["recovery-storageclass"] == ["fast-ssd"]


def test_waxctl_values_are_chart_values_matching_the_manifests(
    values: dict[str, Any], statefulset: dict[str, Any], built: dict[str, list[dict[str, Any]]]
) -> None:
    assert values.keys() <= CHART_VALUES, values.keys() - CHART_VALUES
    for key, allowed in CHART_NESTED_VALUES.items():
        assert values.get(key, {}).keys() <= allowed, (key, values[key].keys() - allowed)
    assert values["configuration"].get("recovery", {}).keys() <= CHART_RECOVERY_VALUES
    assert values["envFromSecret"] == SECRET
    container = flow_container(statefulset)
    spec = pod_spec(statefulset)
    assert values["podSecurityContext"] == spec["securityContext"]
    # `add: []` replaces the chart's default list (NET_BIND_SERVICE); the rest is the same.
    assert values["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": []}
    assert {**values["securityContext"], "capabilities": {"drop": ["ALL"]}} == container[
        "securityContext"
    ]
    assert values["resources"] == container["resources"]
    # The chart's pods: its labels plus podLabels, its port names; the PodMonitor finds them.
    assert not CHART_POD_LABELS & values["podLabels"].keys()
    monitor = find(built["monitoring"], "PodMonitor", "waxhouse")
    assert selects(monitor["spec"]["selector"], values["podLabels"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    chart_ports = {name: values[a][b] for name, (a, b) in CHART_PORTS.items()}
    assert chart_ports == {"process": ports["cluster"], "api": ports["api"]}
    assert values["api"]["enabled"] is True
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in chart_ports
    # What the chart renders from them passes the schema and the lockdown rules.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "waxctl-values"},
        "spec": {
            "securityContext": values["podSecurityContext"],
            "containers": [
                {
                    "name": "process",
                    "image": "waxhouse:0.1.0",
                    "securityContext": values["securityContext"],
                    "resources": values["resources"],
                }
            ],
        },
    }
    assert schema_error(pod) is None, schema_error(pod)
    assert_locked_down(values["podSecurityContext"], pod["spec"]["containers"][0], "values")
    assert_resources(values["resources"], "values.yaml")


def test_sensors_overlay_is_the_base_cluster_running_the_sensors_flow(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    base, sensors = built["base"], built["overlays/sensors"]
    statefulset = find(sensors, "StatefulSet", "sensors")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["python", "-m", "bytewax.run", "dataflows.sensors"]
    config_name = "waxhouse-sensors-config"
    assert {"configMapRef": {"name": config_name}} in container["envFrom"]
    config = find(sensors, "ConfigMap", config_name)["data"]
    replicas = statefulset["spec"]["replicas"]
    assert config["BYTEWAX_ADDRESSES"].split(";") == [
        f"sensors-{i}.sensors.{NAMESPACE}.svc.cluster.local:9999" for i in range(replicas)
    ]
    assert config["BYTEWAX_STATEFULSET_NAME"] == statefulset["metadata"]["name"]
    assert statefulset["spec"]["serviceName"] == "sensors"
    known = settings_names()
    assert all(is_known_setting(name, known) for name in config), config
    assert {"SENSORS_TOPIC", "DEVICES_TOPIC", "ALERTS_TOPIC", "SENSORS_DLQ_TOPIC"} <= set(config)
    # Its pods, and only its pods, are what its Service and disruption budget select.
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selectors = [
        find(sensors, "Service", "sensors")["spec"]["selector"],
        find(sensors, "PodDisruptionBudget", "sensors")["spec"]["selector"]["matchLabels"],
        statefulset["spec"]["selector"]["matchLabels"],
    ]
    base_labels = find(base, "StatefulSet", "clickstream")["spec"]["template"]["metadata"]["labels"]
    for selector in selectors:
        assert selector.items() <= labels.items()
        assert not selector.items() <= base_labels.items()  # not the clickstream's pods
    schema = find(sensors, "Job", "waxhouse-sensors-schema")
    assert schema["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--pipeline",
        "dataflows.sensors",
    ]
    # Applied next to the base, only the shared Namespace and ServiceAccount coincide.
    names = {(r["kind"], r["metadata"]["name"]) for r in base}
    shared = {(r["kind"], r["metadata"]["name"]) for r in sensors} & names
    assert shared == {("Namespace", NAMESPACE), ("ServiceAccount", "waxhouse")}


def test_waxctl_deploys_the_sensors_flow_as_its_overlay_does(
    tmp_path: Path, built: dict[str, list[dict[str, Any]]]
) -> None:
    argv = run_deploy_script(tmp_path, {"WAXHOUSE_FLOW": "sensors"})
    positional, flags = parse_waxctl(argv)
    assert positional == ["sensors.py"] and flags["name"] == ["sensors"]
    overlay = find(built["overlays/sensors"], "ConfigMap", "waxhouse-sensors-config")["data"]
    flow_config = {k: v for k, v in overlay.items() if not k.startswith("BYTEWAX_")}
    env = waxctl_env(argv)
    # As for the clickstream: without a schema Job, the flow creates its tables.
    assert env.pop("CLICKHOUSE_CREATE_SCHEMA") == "true"
    assert flow_config.pop("CLICKHOUSE_CREATE_SCHEMA") == "false"
    assert env == flow_config
    import dataflows.sensors

    namespace = runpy.run_path(str(K8S / "waxctl" / "sensors.py"))
    assert namespace["flow"] is dataflows.sensors.flow


def test_waxctl_refuses_an_unknown_flow(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "waxctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "waxctl").chmod(0o755)
    done = subprocess.run(
        ["bash", str(K8S / "waxctl" / "deploy.sh")],
        env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "WAXHOUSE_FLOW": "orders"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "WAXHOUSE_FLOW must be" in done.stderr


# ---------------------------------------------------------------- Redis and serve


@pytest.fixture(scope="module")
def redis(built: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return find(built["redis"], "StatefulSet", REDIS)


def only_container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    assert container["name"] == name
    return container


def redis_options(container: dict[str, Any]) -> dict[str, str]:
    args = container["args"]
    assert args[0] == "redis-server"
    return dict(zip(args[1::2], args[2::2], strict=True))


def test_redis_is_one_persistent_server_behind_the_service_the_flows_use(
    built: dict[str, list[dict[str, Any]]], redis: dict[str, Any], config: dict[str, str]
) -> None:
    assert redis["spec"]["replicas"] == 1
    container = only_container(redis, REDIS)
    options = redis_options(container)
    assert options["--appendonly"] == "yes", "a restart keeps the keys and the streams' ids"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "volatile-lru"  # evicts only keys with a TTL
    # maxmemory well under the memory limit: an append-only-file rewrite forks.
    maxmemory = re.fullmatch(r"(\d+)(mb|gb)", options["--maxmemory"])
    assert maxmemory, options["--maxmemory"]
    data_bytes = int(maxmemory[1]) * 2 ** {"mb": 20, "gb": 30}[maxmemory[2]]
    assert 2 * data_bytes <= quantity(container["resources"]["limits"]["memory"])
    # Its data directory is the pod's own persistent volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"]: t for t in redis["spec"]["volumeClaimTemplates"]}
    assert mounts[options["--dir"]] in claims
    assert claims[mounts[options["--dir"]]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    security = pod_spec(redis)["securityContext"]
    assert security["fsGroup"] == security["runAsGroup"], "the volume writable by the server"
    # Probed on the port it serves, answering PONG once loaded.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"redis": 6379}
    for probe in ("startupProbe", "readinessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe
    assert container["livenessProbe"]["tcpSocket"] == {"port": "redis"}
    # The governing headless Service, and the Service REDIS_URL names.
    headless = find(built["redis"], "Service", redis["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    service = find(built["redis"], "Service", REDIS)
    assert service["spec"].get("clusterIP") != "None"
    for svc in (headless, service):
        assert svc["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["redis"]
    url = urllib.parse.urlsplit(config["REDIS_URL"])
    assert url.scheme == "redis" and url.password is None, "a password belongs in the Secret"
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    # Only waxhouse's pods may connect (it has no password).
    policy = find(built["redis"], "NetworkPolicy", REDIS)
    assert selects(policy["spec"]["podSelector"], pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    for workload in (find(built["base"], "StatefulSet"), find(built["serve"], "Deployment")):
        assert any(selects(peer["podSelector"], pod_labels(workload)) for peer in rule["from"])
    # The same server as the compose stack's.
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert container["image"] == compose["services"][REDIS]["image"]


@pytest.fixture(scope="module")
def serve(built: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return find(built["serve"], "Deployment", SERVE)


def serve_environment(
    built: dict[str, list[dict[str, Any]]], serve: dict[str, Any]
) -> dict[str, str]:
    """serve's environment as its pods get it: the ConfigMaps it names in order (an optional
    one only if some kustomization builds it) and the example Secret's keys, each later one
    winning."""
    env: dict[str, str] = {}
    everything = [r for resources in built.values() for r in resources]
    maps = {r["metadata"]["name"]: r for r in everything if r["kind"] == "ConfigMap"}
    for source in only_container(serve, SERVE)["envFrom"]:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"serve reads ConfigMap {name}, which nothing creates"
            env.update(maps[name]["data"])
        else:
            assert source["secretRef"]["name"] == SECRET
            example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
            env.update(example["stringData"])
    return env


def test_serve_is_a_stateless_deployment_probed_and_served_on_the_port_it_listens_on(
    built: dict[str, list[dict[str, Any]]], serve: dict[str, Any]
) -> None:
    assert serve["spec"]["replicas"] == 3
    assert serve["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = only_container(serve, SERVE)
    assert container["args"] == ["waxhouse", "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    host, _, port = serve_environment(built, serve)["SERVE_LISTEN"].rpartition(":")
    assert host == "0.0.0.0", "the pod's address, not only its loopback"
    assert ports == {"http": int(port)}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for probe in ("startupProbe", "livenessProbe"):
        # Liveness is the process only: Redis being down must not restart serve.
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    for volume in pod_spec(serve)["volumes"]:
        assert volume.keys() & {"emptyDir", "secret"}, f"serve volume {volume['name']}"
    selector = serve["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels(serve).items()
    service = find(built["serve"], "Service", SERVE)
    assert service["spec"]["selector"] == selector
    assert service["spec"].get("clusterIP") != "None", "one address that balances over pods"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    budget = find(built["serve"], "PodDisruptionBudget", SERVE)
    assert budget["spec"]["selector"]["matchLabels"] == selector
    assert budget["spec"]["maxUnavailable"] < serve["spec"]["replicas"]
    for constraint in pod_spec(serve)["topologySpreadConstraints"]:
        assert constraint["labelSelector"] == serve["spec"]["selector"]


def test_serve_is_scraped_as_its_own_job_and_the_flows_podmonitor_leaves_it_out(
    built: dict[str, list[dict[str, Any]]], serve: dict[str, Any]
) -> None:
    monitor = find(built["monitoring"], "PodMonitor", "waxhouse-serve")
    assert selects(monitor["spec"]["selector"], pod_labels(serve))
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "waxhouse-serve"} in endpoint["relabelings"]
    flows = find(built["monitoring"], "PodMonitor", "waxhouse")
    gateway = find(built["monitoring"], "PodMonitor", "waxhouse-gateway")
    redis = find(built["redis"], "StatefulSet", REDIS)
    for other in (flows, gateway):
        assert not selects(other["spec"]["selector"], pod_labels(serve)), other["metadata"]
    for workload in (
        find(built["base"], "StatefulSet"),
        find(built["overlays/sensors"], "StatefulSet", "sensors"),
        find(built["gateway"], "Deployment", GATEWAY),
        redis,  # it serves no /metrics: watched through its clients
    ):
        assert not selects(monitor["spec"]["selector"], pod_labels(workload))
    for any_monitor in (flows, gateway, monitor):
        assert not selects(any_monitor["spec"]["selector"], pod_labels(redis))
    rules = find(built["monitoring"], "PrometheusRule")
    alerts = {r.get("alert") for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {"RedisWritesDropped", "RedisDown", "ServeErrors", "ServeStreamsSaturated"} <= alerts


def test_serve_reads_the_flows_redis_clickhouse_and_windows_with_its_tokens_from_a_file(
    built: dict[str, list[dict[str, Any]]], serve: dict[str, Any], tmp_path: Path
) -> None:
    from waxhouse.settings import load_settings

    env = serve_environment(built, serve)
    known = settings_names()
    unknown = [name for name in env if not is_known_setting(name, known)]
    assert not unknown, f"not read by waxhouse/settings.py: {unknown}"
    assert "SERVE_TOKENS" not in env, "tokens as a file from the Secret, never a literal"
    # The Redis the flows write, their ClickHouse, and their windows (both flows').
    sensors = find(built["overlays/sensors"], "ConfigMap", "waxhouse-sensors-config")["data"]
    base = find(built["base"], "ConfigMap", "waxhouse-config")["data"]
    for flow_config in (base, sensors):
        for name in ("REDIS_URL", "WINDOW_SECONDS", "ALLOWED_LATENESS_SECONDS"):
            assert env[name] == flow_config[name], name
    for name in ("SESSION_GAP_SECONDS",):
        assert env[name] == base[name], name
    for name in ("SENSOR_WINDOW_SECONDS", "SENSOR_SLIDE_SECONDS", "SENSOR_BATCH_SIZE"):
        assert env[name] == sensors[name], name
    optional = [
        s["configMapRef"]
        for s in only_container(serve, SERVE)["envFrom"]
        if s.get("configMapRef", {}).get("optional")
    ]
    assert optional == [{"name": "waxhouse-sensors-config", "optional": True}], optional
    # The tokens file from its Secret, read-only and readable by serve's group.
    path = Path(env["SERVE_TOKENS_FILE"])
    container = only_container(serve, SERVE)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(serve)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == SERVE_TOKENS_SECRET
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == path.name]
    pod_security = pod_spec(serve)["securityContext"]
    mode = volume["secret"].get("defaultMode", 0o644)
    assert mode & 0o004 or (mode & 0o040 and pod_security["fsGroup"] == pod_security["runAsGroup"])
    example = yaml.safe_load((K8S / "serve" / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SERVE_TOKENS_SECRET
    assert example["metadata"]["namespace"] == NAMESPACE
    assert list(example["stringData"]) == [item["key"]]
    assert not [r for r in built["serve"] if r["kind"] == "Secret"]
    # A valid configuration, with the example Secret's tokens file where the pod has it.
    (tokens,) = example["stringData"].values()
    (tmp_path / "tokens").write_text(tokens)
    settings = load_settings(env | {"SERVE_TOKENS_FILE": str(tmp_path / "tokens")}, serve=True)
    assert settings.serve.listen == env["SERVE_LISTEN"]
    assert settings.serve.tokens == ("TOKEN",)
    assert settings.serve.max_streams == int(env["SERVE_MAX_STREAMS"])
    assert settings.redis_url == base["REDIS_URL"]
    assert (
        pod_spec(serve)["serviceAccountName"]
        == find(built["base"], "ServiceAccount")["metadata"]["name"]
    )


def test_waxctl_passes_redis_url_only_without_credentials(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    url = "rediss://redis.example.com:6380/0"
    assert waxctl_env(run_deploy_script(tmp_path / "a", {"REDIS_URL": url}))["REDIS_URL"] == url
    # From the Secret: not passed at all (the chart's envFromSecret gives it).
    assert "REDIS_URL" not in waxctl_env(
        run_deploy_script(tmp_path / "b", {"REDIS_URL": "from-secret"})
    )
    # With a password: refused, and the URL is not echoed.
    bin_dir = tmp_path / "c"
    bin_dir.mkdir()
    (bin_dir / "waxctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "waxctl").chmod(0o755)
    done = subprocess.run(
        ["bash", str(K8S / "waxctl" / "deploy.sh")],
        env={
            "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
            "REDIS_URL": "rediss://:s3cret@redis.example.com:6380/0",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "REDIS_URL holds credentials" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


# ---------------------------------------------------------------- autoscaling


def test_the_autoscaler_may_only_resize_the_flow_and_restart_its_pods(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in built["autoscaling"]}
    role = objects[("Role", AUTOSCALER_ACCOUNT)]
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": ["clickstream"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
    ]
    binding = objects[("RoleBinding", AUTOSCALER_ACCOUNT)]
    assert binding["roleRef"]["name"] == AUTOSCALER_ACCOUNT
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": AUTOSCALER_ACCOUNT, "namespace": NAMESPACE}
    ]
    deployment = objects[("Deployment", "autoscaler")]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == AUTOSCALER_ACCOUNT
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["waxhouse", "autoscale"]
    assert "--kubernetes=clickstream" in args and f"--namespace={NAMESPACE}" in args
    parser = build_parser()
    parsed = parser.parse_args(args[1:])  # the image's CLI accepts them
    assert parsed.kubernetes == "clickstream" and not parsed.dry_run
