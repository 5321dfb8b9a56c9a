"""The Kubernetes actuator: the flow's StatefulSet on the shared-recovery layout
(`k8s/overlays/shared-recovery`), resized with its address list in one update.

A Bytewax cluster's process count is fixed at start: every process gets the whole address
list. So a rescale is one strategic-merge patch of the StatefulSet that sets `replicas`
and the container's `BYTEWAX_ADDRESSES` together (an `env` entry, which wins over the
ConfigMap's), guarded by the StatefulSet's `resourceVersion`; then every pod still on the
old revision is deleted, so that all of them restart into the new cluster at once instead
of one by one; then it waits until `replicas` pods run the new revision and are ready. On
the shared layout every pod mounts the one recovery directory, so the new cluster
resumes from the same state at any size.

The ServiceAccount needs `get` and `patch` on the StatefulSet and `list` and `delete`
on its pods, nothing else (`k8s/autoscaling/rbac.yaml`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from waxhouse.errors import WaxhouseError

logger = logging.getLogger(__name__)

ADDRESSES = "BYTEWAX_ADDRESSES"
CONFLICT, FORBIDDEN, NOT_FOUND, TOO_MANY = 409, 403, 404, 429


class KubernetesError(WaxhouseError):
    """The StatefulSet could not be read or resized."""


class AppsApi(Protocol):
    """The calls of `kubernetes.client.AppsV1Api` used here."""

    def read_namespaced_stateful_set(self, name: str, namespace: str) -> Any: ...

    def patch_namespaced_stateful_set(self, name: str, namespace: str, body: Any) -> Any: ...


class CoreApi(Protocol):
    """The calls of `kubernetes.client.CoreV1Api` used here."""

    def list_namespaced_pod(self, namespace: str, *, label_selector: str | None = ...) -> Any: ...

    def delete_namespaced_pod(self, name: str, namespace: str) -> Any: ...


@dataclass(frozen=True)
class Target:
    """Which StatefulSet, and the ports and container of its pods."""

    name: str = "clickstream"
    namespace: str = "waxhouse"
    container: str = "clickstream"
    peer_port: int = 9999
    metrics_port: int = 3030


@dataclass(frozen=True)
class KubeRescale:
    """How long a rescale took: the patch, and until every new pod was ready."""

    before: int
    after: int
    patch_s: float
    ready_s: float


def addresses(target: Target, service: str, processes: int) -> str:
    """Every pod's peer address, by its stable name under the headless service."""
    domain = f"{service}.{target.namespace}.svc.cluster.local"
    return ";".join(f"{target.name}-{i}.{domain}:{target.peer_port}" for i in range(processes))


def patch_body(target: Target, service: str, processes: int, version: str) -> dict[str, Any]:
    """The one update: replicas and the address list, on the version read."""
    env = [{"name": ADDRESSES, "value": addresses(target, service, processes)}]
    return {
        "metadata": {"resourceVersion": version},
        "spec": {
            "replicas": processes,
            "template": {"spec": {"containers": [{"name": target.container, "env": env}]}},
        },
    }


class StatefulSetActuator:
    """Resizes `target` through the Kubernetes API (`apps`, `core`: the official client's
    `AppsV1Api` and `CoreV1Api`, or fakes). Conflicts (someone else changed the
    StatefulSet) are read again and retried; throttling and server errors are retried
    with backoff; anything else, `KubernetesError`."""

    def __init__(
        self,
        apps: AppsApi,
        core: CoreApi,
        target: Target,
        *,
        attempts: int = 5,
        ready_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._apps = apps
        self._core = core
        self.target = target
        self._attempts = attempts
        self._ready_timeout_s = ready_timeout_s
        self._clock = clock
        self._sleep = sleep

    @property
    def size(self) -> int:
        return int(self._read().spec.replicas or 0)

    def check(self) -> None:
        self._read()

    def metrics_urls(self) -> list[str]:
        port = self.target.metrics_port
        return [f"http://{pod.status.pod_ip}:{port}/metrics" for pod in self._pods() if _ready(pod)]

    def rescale(self, processes: int) -> KubeRescale:
        began = self._clock()
        before, revision = self._patch(processes)
        patched = self._clock()
        self._restart_old(revision)
        self._wait_ready(processes, revision)
        return KubeRescale(before, processes, patched - began, self._clock() - patched)

    def _patch(self, processes: int) -> tuple[int, str]:
        """Patch on the latest version; returns the count before and the new revision."""
        target = self.target
        for attempt in range(1, self._attempts + 1):
            current = self._read()
            body = patch_body(
                target, current.spec.service_name, processes, current.metadata.resource_version
            )
            try:
                updated = self._call(self._patcher(body))
            except _Conflict:
                logger.info("autoscale: %s changed meanwhile (attempt %d)", target.name, attempt)
                continue
            revision = updated.status.update_revision if updated.status else None
            return int(current.spec.replicas or 0), str(revision or "")
        raise KubernetesError(
            f"statefulset {target.namespace}/{target.name} kept changing: gave up after "
            f"{self._attempts} conflicting updates"
        )

    def _patcher(self, body: dict[str, Any]) -> Callable[[], Any]:
        target = self.target
        return lambda: self._apps.patch_namespaced_stateful_set(target.name, target.namespace, body)

    def _restart_old(self, revision: str) -> None:
        for pod in self._pods():
            if pod.metadata.labels.get("controller-revision-hash") != revision:
                name = pod.metadata.name
                try:
                    self._call(
                        partial(self._core.delete_namespaced_pod, name, self.target.namespace)
                    )
                except KubernetesError as e:
                    if getattr(e, "status", None) != NOT_FOUND:
                        raise

    def _wait_ready(self, processes: int, revision: str) -> None:
        deadline = self._clock() + self._ready_timeout_s
        while True:
            pods = [
                p
                for p in self._pods()
                if p.metadata.labels.get("controller-revision-hash") == revision
            ]
            if sum(_ready(p) for p in pods) >= processes:
                return
            if self._clock() > deadline:
                raise KubernetesError(
                    f"{self.target.name}: {sum(_ready(p) for p in pods)} of {processes} pods "
                    f"ready after {self._ready_timeout_s:.0f} s"
                )
            self._sleep(2.0)

    def _read(self) -> Any:
        target = self.target
        return self._call(
            lambda: self._apps.read_namespaced_stateful_set(target.name, target.namespace)
        )

    def _pods(self) -> list[Any]:
        selector = self._read().spec.selector.match_labels
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return list(
            self._call(
                lambda: self._core.list_namespaced_pod(self.target.namespace, label_selector=labels)
            ).items
        )

    def _call(self, call: Callable[[], Any]) -> Any:
        """`call`, retried on throttling and server errors; a conflict raises `_Conflict`."""
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except Exception as e:  # the client's ApiException, told by its status
                status = getattr(e, "status", None)
                if not isinstance(status, int):
                    raise
                if status == CONFLICT:
                    raise _Conflict() from e
                if (status == TOO_MANY or status >= 500) and attempt < self._attempts:
                    self._sleep(delay)
                    delay *= 2
                    continue
                raise _api_error(self.target, status, e) from e
        raise AssertionError("unreachable")


class _Conflict(Exception):
    pass


def _api_error(target: Target, status: int, error: Exception) -> KubernetesError:
    where = f"statefulset {target.namespace}/{target.name}"
    if status == FORBIDDEN:
        message = (
            f"{where}: forbidden; the autoscaler's ServiceAccount needs get and patch on "
            "statefulsets and list and delete on pods (k8s/autoscaling/rbac.yaml)"
        )
    elif status == NOT_FOUND:
        message = f"{where}: not found"
    else:
        message = f"{where}: the API answered {status}: {getattr(error, 'reason', error)}"
    failure = KubernetesError(message)
    failure.status = status  # type: ignore[attr-defined]
    return failure


def _ready(pod: Any) -> bool:
    status = pod.status
    if status is None or status.phase != "Running" or not status.pod_ip:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())


def connect(target: Target) -> StatefulSetActuator:
    """The actuator on the official client, configured in-cluster (the pod's
    ServiceAccount) or else from the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return StatefulSetActuator(client.AppsV1Api(), client.CoreV1Api(), target)
