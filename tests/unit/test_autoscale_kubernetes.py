"""The Kubernetes actuator against a fake API: the patch it sends, conflicts, API errors,
restarting the old pods and waiting for the new ones."""

from __future__ import annotations

from types import SimpleNamespace as Obj
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from waxhouse.autoscale.kubernetes import (
    KubernetesError,
    StatefulSetActuator,
    Target,
    addresses,
    patch_body,
)

TARGET = Target("clickstream", "waxhouse", "clickstream")
DOMAIN = "clickstream.waxhouse.svc.cluster.local"
SELECTOR = {"app.kubernetes.io/name": "waxhouse", "app.kubernetes.io/component": "clickstream"}


def pod(name: str, revision: str, ready: bool = True, ip: str = "10.0.0.1") -> Obj:
    condition = Obj(type="Ready", status="True" if ready else "False")
    return Obj(
        metadata=Obj(name=name, labels={**SELECTOR, "controller-revision-hash": revision}),
        status=Obj(phase="Running", pod_ip=ip, conditions=[condition]),
    )


class Cluster:
    """The API server, as far as the actuator uses it: one StatefulSet and its pods. A
    patch moves it to a new revision; the controller then replaces deleted pods with
    ready ones of the current revision on the next list."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self.version = 7
        self.revision = "r1"
        self.pods = {f"clickstream-{i}": pod(f"clickstream-{i}", "r1") for i in range(replicas)}
        self.patches: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.failures: dict[str, list[int]] = {}  # call -> statuses to raise, in turn
        self.changed_meanwhile = 0  # conflicting writes by someone else, one per patch

    def _fail(self, call: str) -> None:
        statuses = self.failures.get(call)
        if statuses:
            raise ApiException(status=statuses.pop(0), reason="fake")

    def read_namespaced_stateful_set(self, name: str, namespace: str) -> Obj:
        assert (name, namespace) == (TARGET.name, TARGET.namespace)
        self._fail("read")
        return Obj(
            metadata=Obj(resource_version=str(self.version)),
            spec=Obj(
                replicas=self.replicas,
                service_name="clickstream",
                selector=Obj(match_labels=SELECTOR),
            ),
        )

    def patch_namespaced_stateful_set(self, name: str, namespace: str, body: Any) -> Obj:
        self._fail("patch")
        self.patches.append(body)
        if self.changed_meanwhile:
            self.changed_meanwhile -= 1
            self.version += 1
            raise ApiException(status=409, reason="Conflict")
        assert body["metadata"]["resourceVersion"] == str(self.version)
        self.version += 1
        self.replicas = body["spec"]["replicas"]
        self.revision = f"r{self.version}"
        return Obj(status=Obj(update_revision=self.revision))

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None) -> Obj:
        assert label_selector == ",".join(f"{k}={v}" for k, v in sorted(SELECTOR.items()))
        self._fail("list")
        for i in range(self.replicas):
            name = f"clickstream-{i}"
            if name not in self.pods:
                self.pods[name] = pod(name, self.revision, ip=f"10.0.0.{i + 1}")
        for name in [n for n in self.pods if int(n.rsplit("-", 1)[1]) >= self.replicas]:
            del self.pods[name]
        return Obj(items=list(self.pods.values()))

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        if self.failures.get("delete"):
            self.pods.pop(name, None)  # it went on its own: the answer is 404
        self._fail("delete")
        self.deleted.append(name)
        self.pods.pop(name, None)


def actuator(cluster: Cluster, **kwargs: Any) -> tuple[StatefulSetActuator, list[float]]:
    slept: list[float] = []
    now = iter(range(0, 100_000))
    made = StatefulSetActuator(
        cluster, cluster, TARGET, clock=lambda: float(next(now)), sleep=slept.append, **kwargs
    )
    return made, slept


def test_the_patch_sets_replicas_and_the_address_list_on_the_version_read() -> None:
    body = patch_body(TARGET, "clickstream", 2, "41")
    assert body == {
        "metadata": {"resourceVersion": "41"},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "clickstream",
                            "env": [
                                {
                                    "name": "BYTEWAX_ADDRESSES",
                                    "value": f"clickstream-0.{DOMAIN}:9999;"
                                    f"clickstream-1.{DOMAIN}:9999",
                                }
                            ],
                        }
                    ]
                }
            },
        },
    }
    assert addresses(TARGET, "clickstream", 1).count(";") == 0


def test_a_rescale_patches_once_restarts_every_old_pod_and_waits_for_the_new_ones() -> None:
    cluster = Cluster(replicas=2)
    scale, _ = actuator(cluster)
    assert scale.size == 2
    report = scale.rescale(3)
    assert len(cluster.patches) == 1 and cluster.patches[0]["spec"]["replicas"] == 3
    assert sorted(cluster.deleted) == ["clickstream-0", "clickstream-1"]
    assert (report.before, report.after) == (2, 3)
    assert scale.size == 3
    assert {p.metadata.labels["controller-revision-hash"] for p in cluster.pods.values()} == {
        cluster.revision
    }
    assert sorted(scale.metrics_urls()) == [f"http://10.0.0.{i}:3030/metrics" for i in (1, 2, 3)]


def test_a_conflict_is_read_again_and_patched_on_the_new_version() -> None:
    cluster = Cluster()
    cluster.changed_meanwhile = 2
    scale, _ = actuator(cluster)
    scale.rescale(2)
    versions = [p["metadata"]["resourceVersion"] for p in cluster.patches]
    assert versions == ["7", "8", "9"]
    assert cluster.replicas == 2


def test_endless_conflicts_give_up_with_an_error() -> None:
    cluster = Cluster()
    cluster.changed_meanwhile = 99
    scale, _ = actuator(cluster, attempts=3)
    with pytest.raises(KubernetesError, match="kept changing"):
        scale.rescale(2)
    assert cluster.replicas == 1 and len(cluster.patches) == 3


def test_throttling_and_server_errors_are_retried_with_backoff() -> None:
    cluster = Cluster()
    cluster.failures = {"patch": [429, 503], "list": [500]}
    scale, slept = actuator(cluster)
    scale.rescale(2)
    assert cluster.replicas == 2
    assert slept[:2] == [0.5, 1.0]


@pytest.mark.parametrize(
    ("status", "says"), [(403, "rbac.yaml"), (404, "not found"), (422, "answered 422")]
)
def test_other_api_errors_stop_with_a_clear_error(status: int, says: str) -> None:
    cluster = Cluster()
    cluster.failures = {"patch": [status]}
    scale, _ = actuator(cluster)
    with pytest.raises(KubernetesError, match=says):
        scale.rescale(2)
    assert cluster.replicas == 1


def test_a_pod_already_gone_is_no_failure() -> None:
    cluster = Cluster(replicas=2)
    cluster.failures = {"delete": [404]}
    scale, _ = actuator(cluster)
    scale.rescale(2)
    assert cluster.deleted == ["clickstream-1"]  # the first was gone already


def test_pods_that_never_get_ready_time_out() -> None:
    cluster = Cluster()
    scale, _ = actuator(cluster, ready_timeout_s=30)
    original = cluster.list_namespaced_pod

    def never_ready(namespace: str, label_selector: str | None = None) -> Obj:
        listed = original(namespace, label_selector)
        for item in listed.items:
            item.status.conditions[0].status = "False"
        return listed

    cluster.list_namespaced_pod = never_ready  # type: ignore[method-assign]
    with pytest.raises(KubernetesError, match="0 of 2 pods ready"):
        scale.rescale(2)
