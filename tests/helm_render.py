"""Render the Helm chart in helm/itmguard offline, for the chart's tests.

There is no cluster and no `helm` binary here: helm-python-sdk (Helm's Go SDK in a wheel) renders
and lints the chart, kubernetes-validate checks every Kubernetes object against the newest
Kubernetes schema it ships (strictly: an unknown field fails), and the KEDA and Prometheus-operator
objects are checked against the CRD schemas kept in tests/k8s_schemas. CASES is the render matrix
the test modules share.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "itmguard"
CRD_SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
RELEASE = "itmguard"
NAMESPACE = "moderation"
KUBE_VERSION = kubernetes_validate.utils.latest_version()

SECRET = "itmguard-credentials"
TLS_SECRET = "kafka-client-tls"
REQUIRED: dict[str, Any] = {
    "secrets": {"existingSecret": SECRET},
    "worker": {"bundle": {"existingClaim": "itmguard-models", "path": "blip-itm-base"}},
}
CRD_SCHEMA_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
}
POD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod")

Manifests = dict[str, list[dict[str, Any]]]


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge values dicts, later layers winning, as `helm -f a.yaml -f b.yaml` does."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def values(**layer: Any) -> dict[str, Any]:
    """The required values with `layer` merged over them."""
    return merged(REQUIRED, layer)


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


@functools.cache
def _render_text(values_json: str) -> tuple[tuple[str, str], ...]:
    rendered = _chart().render(
        json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return tuple(sorted(rendered.items()))


def render(values_: dict[str, Any]) -> Manifests:
    """Render the chart with `values_` and return its manifests grouped by kind."""
    by_kind: Manifests = defaultdict(list)
    for path, text in _render_text(json.dumps(values_, sort_keys=True)):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                by_kind[doc["kind"]].append(doc)
    return dict(by_kind)


def notes(values_: dict[str, Any]) -> str:
    """The rendered NOTES.txt."""
    rendered = dict(_render_text(json.dumps(values_, sort_keys=True)))
    return rendered[f"{CHART.name}/templates/NOTES.txt"]


def render_error(values_: dict[str, Any]) -> str:
    """The message of the error that rendering `values_` raises."""
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError)) as caught:
        _chart().render(values_, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(caught.value)


def one(manifests: Manifests, kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of `kind` (named `name` when given)."""
    found = [
        m
        for m in manifests.get(kind, [])
        if name is None or m["metadata"]["name"] == f"{RELEASE}-{name}"
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def pod_specs(manifests: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every object that makes pods."""
    for kind in POD_KINDS:
        for m in manifests.get(kind, []):
            spec = m["spec"] if kind == "Pod" else m["spec"]["template"]["spec"]
            yield f"{kind}/{m['metadata']['name']}", spec


def worker_workload(manifests: Manifests) -> dict[str, Any]:
    """The worker's Deployment or StatefulSet."""
    found = [
        m
        for kind in ("Deployment", "StatefulSet")
        for m in manifests.get(kind, [])
        if m["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert len(found) == 1
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def config_data(manifests: Manifests, component: str) -> dict[str, str]:
    return one(manifests, "ConfigMap", component)["data"]


def checksum(manifests: Manifests, kind: str, name: str) -> str:
    return one(manifests, kind, name)["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]


# The render matrix: each case names what it turns on.
CASES: dict[str, dict[str, Any]] = {
    "cpu-deployment-defaults": values(),
    "gpu-deployment-keda-sasl-ssl": values(
        kafka={
            "bootstrap": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
            "postsPartitions": 12,
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-256"},
            "tls": {"secretName": TLS_SECRET, "certKey": "tls.crt", "keyKey": "tls.key"},
        },
        worker={
            "gpu": {"enabled": True, "nodeSelector": {"nvidia.com/gpu.present": "true"}},
            "runtimeClassName": "nvidia",
            "shm": {"enabled": True, "sizeLimit": "2Gi"},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ],
        },
        autoscaling={
            "mode": "keda",
            "minReplicas": 0,
            "maxReplicas": 12,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
        metrics={"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    ),
    "gpu-statefulset-static-hpa": values(
        kafka={"postsPartitions": 6},
        worker={
            "kind": "StatefulSet",
            "staticMembership": True,
            "sessionTimeoutSeconds": 90,
            "heartbeatSeconds": 3,
            "gpu": {"enabled": True},
            "trtCache": {"existingClaim": "itmguard-trt-cache"},
        },
        autoscaling={"mode": "hpa", "minReplicas": 2, "maxReplicas": 6},
    ),
    "cpu-statefulset-keda-no-review": values(
        kafka={"postsPartitions": 8},
        worker={"kind": "StatefulSet", "resources": {"limits": {"cpu": "4", "memory": "4Gi"}}},
        autoscaling={"mode": "keda", "minReplicas": 1, "maxReplicas": 8},
        review={"enabled": False},
    ),
    "cpu-chart-secret-ingress": merged(
        {"worker": REQUIRED["worker"]},
        {
            "secrets": {
                "create": True,
                "values": {
                    "databaseUrl": "postgresql+psycopg://itmguard:pw@db:5432/itmguard",
                    "reviewSecret": "r" * 40,
                    "kafkaSaslUsername": "itmguard",
                    "kafkaSaslPassword": "kafka-pw",
                },
            },
            "kafka": {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "PLAIN"}},
            "migrations": {"enabled": False},
            "review": {
                "replicas": 2,
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "hosts": ["review.example.org"],
                    "tls": [{"secretName": "review-tls", "hosts": ["review.example.org"]}],
                },
            },
        },
    ),
}
GPU_CASES = [name for name in CASES if name.startswith("gpu-")]
CPU_CASES = [name for name in CASES if name.startswith("cpu-")]
