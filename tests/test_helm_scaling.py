"""The chart's scaling: KEDA on consumer lag or an HPA, never both, and disruption budgets."""

from __future__ import annotations

import pytest

from tests.helm_render import (
    CASES,
    RELEASE,
    SECRET,
    TLS_SECRET,
    config_data,
    one,
    render,
    render_error,
    values,
)


def test_keda_scales_on_the_workers_own_group_and_topic() -> None:
    """The ScaledObject counts lag of the worker's group on its posts topic from the earliest
    offset, stays within the partitions, authenticates with the same Secret, and leaves replicas
    to KEDA."""
    manifests = render(CASES["gpu-deployment-keda-sasl-ssl"])
    so = one(manifests, "ScaledObject", "worker")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-worker",
    }
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["maxReplicaCount"] == 12
    (trigger,) = so["spec"]["triggers"]
    data = config_data(manifests, "worker")
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == data["ITMGUARD_GROUP_ID"]
    assert meta["topic"] == data["ITMGUARD_POSTS_TOPIC"]
    assert meta["bootstrapServers"] == data["ITMGUARD_KAFKA_BOOTSTRAP"]
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["allowIdleConsumers"] == "false"
    assert meta["sasl"] == "scram_sha256"
    assert meta["tls"] == "enable"
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 600}
    }
    auth = one(manifests, "TriggerAuthentication", "worker")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": (SECRET, "kafka-sasl-username"),
        "password": (SECRET, "kafka-sasl-password"),
        "ca": (TLS_SECRET, "ca.crt"),
        "cert": (TLS_SECRET, "tls.crt"),
        "key": (TLS_SECRET, "tls.key"),
    }
    assert "HorizontalPodAutoscaler" not in manifests
    assert "replicas" not in one(manifests, "Deployment", "worker")["spec"]

    plain = render(CASES["cpu-statefulset-keda-no-review"])
    plain_so = one(plain, "ScaledObject", "worker")
    assert plain_so["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert "authenticationRef" not in plain_so["spec"]["triggers"][0]
    assert "TriggerAuthentication" not in plain
    assert "replicas" not in one(plain, "StatefulSet", "worker")["spec"]


def test_keda_guards() -> None:
    """Autoscaling refuses to go above the partition count unless idle consumers are allowed,
    needs the partition count, and keeps minReplicas at most maxReplicas."""
    keda = {"mode": "keda", "minReplicas": 1, "maxReplicas": 10}
    error = render_error(values(kafka={"postsPartitions": 6}, autoscaling=keda))
    assert "autoscaling.maxReplicas (10) is above kafka.postsPartitions (6)" in error
    idle = render(
        values(kafka={"postsPartitions": 6}, autoscaling={**keda, "allowIdleConsumers": True})
    )
    so = one(idle, "ScaledObject", "worker")
    assert so["spec"]["maxReplicaCount"] == 10
    assert so["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] == "true"
    assert "set kafka.postsPartitions" in render_error(values(autoscaling=keda))
    inverted = {**keda, "minReplicas": 5, "maxReplicas": 4}
    error = render_error(values(kafka={"postsPartitions": 6}, autoscaling=inverted))
    assert "minReplicas must be at most autoscaling.maxReplicas" in error


def test_scale_to_zero_only_with_keda_and_a_topic() -> None:
    """Scale to zero is KEDA's alone, and its trigger always names the topic and counts from the
    earliest offset, so a group that never committed still wakes the workers."""
    manifests = render(CASES["gpu-deployment-keda-sasl-ssl"])
    meta = one(manifests, "ScaledObject", "worker")["spec"]["triggers"][0]["metadata"]
    assert meta["topic"] == "posts"
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["activationLagThreshold"] == "0"
    hpa_zero = {"mode": "hpa", "minReplicas": 0, "maxReplicas": 2}
    error = render_error(values(kafka={"postsPartitions": 4}, autoscaling=hpa_zero))
    assert "scale to zero" in error
    error = render_error(values(kafka={"postsTopic": ""}))
    assert "/kafka/postsTopic" in error


def test_hpa_when_keda_is_off_never_both() -> None:
    """autoscaling.mode=hpa makes an HPA on the worker and no ScaledObject; mode none makes
    neither and fixes the replicas."""
    manifests = render(CASES["gpu-statefulset-static-hpa"])
    hpa = one(manifests, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "ScaledObject" not in manifests
    assert "replicas" not in one(manifests, "StatefulSet", "worker")["spec"]
    plain = render(values(worker={"replicas": 3}))
    assert "HorizontalPodAutoscaler" not in plain and "ScaledObject" not in plain
    assert one(plain, "Deployment", "worker")["spec"]["replicas"] == 3
    assert "/autoscaling/mode" in render_error(values(autoscaling={"mode": "both"}))


@pytest.mark.parametrize("case", CASES)
def test_pod_disruption_budgets_use_max_unavailable(case: str) -> None:
    """Every component's PodDisruptionBudget sets maxUnavailable (so one replica can be drained),
    lets unready pods be evicted, and selects exactly that component's pods."""
    manifests = render(CASES[case])
    components = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in manifests["PodDisruptionBudget"]
    }
    expected = (
        {"worker", "review"} if CASES[case].get("review", {}).get("enabled", True) else {"worker"}
    )
    assert set(components) == expected
    for component, pdb in components.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        assert "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
