"""The Helm chart in helm/itmguard, rendered offline for a matrix of values.

There is no cluster and no `helm` binary here: helm-python-sdk (Helm's Go SDK in a wheel) renders
and lints the chart, kubernetes-validate checks every Kubernetes object against the newest
Kubernetes schema it ships (strictly: an unknown field fails), and the KEDA and Prometheus-operator
objects are checked against the CRD schemas kept in tests/k8s_schemas.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
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


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_SCHEMAS / CRD_SCHEMA_FILES[(api_version, kind)]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_valid_for_the_newest_kubernetes_or_its_crd(case: str) -> None:
    """Every rendered object passes strict validation against the newest Kubernetes schema
    kubernetes-validate ships, or against the CRD schema kept with the tests."""
    checked = 0
    for kind, manifests in render(CASES[case]).items():
        for m in manifests:
            key = (m["apiVersion"], kind)
            if key in CRD_SCHEMA_FILES:
                _crd_validator(*key).validate(m)
            else:
                kubernetes_validate.validate(m, KUBE_VERSION, strict=True)
            checked += 1
    assert checked >= 8


def test_crd_schemas_reject_what_the_crds_reject() -> None:
    """The kept CRD schemas fail an unknown field, a wrong type and a bad KEDA Kafka enum."""
    so = one(render(CASES["gpu-deployment-keda-sasl-ssl"]), "ScaledObject", "worker")
    validator = _crd_validator("keda.sh/v1alpha1", "ScaledObject")
    validator.validate(so)
    broken = [
        merged(so, {"spec": {"maxReplicas": 3}}),
        merged(so, {"spec": {"pollingInterval": "30"}}),
        merged(so, {"spec": {"minReplicaCount": -1}}),
    ]
    bad_trigger = copy.deepcopy(so)
    bad_trigger["spec"]["triggers"][0]["metadata"]["offsetResetPolicy"] = "oldest"
    broken.append(bad_trigger)
    for doc in broken:
        assert not validator.is_valid(doc)
    pm = one(render(CASES["gpu-deployment-keda-sasl-ssl"]), "PodMonitor", "worker")
    assert not _crd_validator("monitoring.coreos.com/v1", "PodMonitor").is_valid(
        merged(pm, {"spec": {"podMetricsEndpoints": [{"interval": "30 seconds"}]}})
    )
    for name in CRD_SCHEMA_FILES.values():
        header = json.loads((CRD_SCHEMAS / name).read_text())["x-upstream"]
        assert header["release"] and header["crd"]


@pytest.mark.parametrize("case", CASES)
def test_the_chart_lints_strictly(case: str) -> None:
    """`helm lint --strict` finds nothing, not even a warning, with each case's values."""
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_bare_defaults_lint_clean_but_do_not_install() -> None:
    """The bare defaults lint clean, yet rendering them for an install fails, naming the Secret
    and the bundle volume that must be given."""
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert "set secrets.existingSecret" in render_error({})
    error = render_error(merged(REQUIRED, {"worker": {"bundle": {"existingClaim": ""}}}))
    assert "set worker.bundle.existingClaim" in error


@pytest.mark.parametrize("case", CASES)
def test_labels_follow_the_helm_guide(case: str) -> None:
    """Every object carries the recommended labels, and every selector matches its pods."""
    manifests = render(CASES[case])
    for kind, objects in manifests.items():
        for m in objects:
            labels = m["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "itmguard"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"] == "0.1.0"
            assert labels["helm.sh/chart"] == "itmguard-0.1.0"
            assert labels["app.kubernetes.io/component"]
            assert m["metadata"]["namespace"] == NAMESPACE
            if kind in ("Deployment", "StatefulSet"):
                selector = m["spec"]["selector"]["matchLabels"]
                pod_labels = m["spec"]["template"]["metadata"]["labels"]
                assert selector.items() <= pod_labels.items()
                assert "app.kubernetes.io/version" not in selector


def test_worker_is_a_deployment_by_default_and_a_statefulset_on_request() -> None:
    """The worker is a Deployment by default; as a StatefulSet it is governed by a headless
    Service and takes its group instance id from its pod name."""
    default = render(CASES["cpu-deployment-defaults"])
    assert sorted(m["metadata"]["name"] for m in default["Deployment"]) == [
        f"{RELEASE}-review",
        f"{RELEASE}-worker",
    ]
    assert "StatefulSet" not in default
    assert "ITMGUARD_GROUP_INSTANCE_ID" not in env_of(
        container(one(default, "Deployment", "worker"), "worker")
    )

    manifests = render(CASES["gpu-statefulset-static-hpa"])
    sts = one(manifests, "StatefulSet", "worker")
    service = one(manifests, "Service", "worker")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    instance_id = env_of(container(sts, "worker"))["ITMGUARD_GROUP_INSTANCE_ID"]
    assert instance_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_static_membership_without_a_statefulset_fails() -> None:
    """Static membership on a Deployment stops the render with a message naming the fix."""
    error = render_error(values(worker={"staticMembership": True}))
    assert "worker.staticMembership needs worker.kind=StatefulSet" in error


def test_a_statefulset_without_static_membership_sets_no_instance_id() -> None:
    """A StatefulSet worker joins dynamically unless static membership is asked for."""
    sts = one(render(CASES["cpu-statefulset-keda-no-review"]), "StatefulSet", "worker")
    assert "ITMGUARD_GROUP_INSTANCE_ID" not in env_of(container(sts, "worker"))


@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_worker_asks_for_gpus_in_limits_only(case: str) -> None:
    """A GPU worker runs the GPU image with nvidia.com/gpu in its limits (not requests), the GPU
    tolerations and node selector, and TensorRT then CUDA with no CPU fallback."""
    manifests = render(CASES[case])
    workload = worker_workload(manifests)
    pod = workload["spec"]["template"]["spec"]
    worker = container(workload, "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in worker["resources"].get("requests", {})
    assert worker["image"] == "ghcr.io/itmguard/itmguard:0.1.0-gpu"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert config_data(manifests, "worker")["ITMGUARD_PROVIDERS"] == "tensorrt,cuda"
    review_pods = [spec for name, spec in pod_specs(manifests) if "worker" not in name]
    for spec in review_pods:
        for c in spec["containers"]:
            assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))
            assert not c["image"].endswith("-gpu")


def test_gpu_node_selector_and_runtime_class_only_when_set() -> None:
    """runtimeClassName and the GPU node selector appear only when set, and a CPU worker has
    neither GPUs nor GPU tolerations."""
    gpu = worker_workload(render(CASES["gpu-deployment-keda-sasl-ssl"]))["spec"]["template"]
    assert gpu["spec"]["runtimeClassName"] == "nvidia"
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    bare_gpu = worker_workload(render(CASES["gpu-statefulset-static-hpa"]))["spec"]["template"]
    assert "runtimeClassName" not in bare_gpu["spec"]
    assert "nodeSelector" not in bare_gpu["spec"]
    cpu_manifests = render(CASES["cpu-deployment-defaults"])
    cpu = worker_workload(cpu_manifests)["spec"]["template"]["spec"]
    assert "runtimeClassName" not in cpu
    assert "tolerations" not in cpu
    assert "nvidia.com/gpu" not in json.dumps(cpu["containers"][0]["resources"])
    assert config_data(cpu_manifests, "worker")["ITMGUARD_PROVIDERS"] == "cpu"


def test_gpu_deployment_rolls_without_surge() -> None:
    """A GPU Deployment rolls with maxSurge 0, accepts Recreate, and refuses a surge strategy
    that would wait forever for a spare GPU."""
    strategy = one(render(CASES["gpu-deployment-keda-sasl-ssl"]), "Deployment", "worker")["spec"][
        "strategy"
    ]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    gpu = {"gpu": {"enabled": True}}
    recreate = render(values(worker={**gpu, "updateStrategy": {"type": "Recreate"}}))
    assert one(recreate, "Deployment", "worker")["spec"]["strategy"] == {"type": "Recreate"}
    surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    error = render_error(values(worker={**gpu, "updateStrategy": surge}))
    assert "must roll with type Recreate or rollingUpdate.maxSurge 0" in error
    default_surge = render_error(
        values(worker={**gpu, "updateStrategy": {"type": "RollingUpdate"}})
    )
    assert "maxSurge 0" in default_surge


def test_gpus_given_in_resources_are_refused() -> None:
    """GPUs are given by worker.gpu.count only, so that they never land in requests."""
    error = render_error(
        values(worker={"gpu": {"enabled": True}, "resources": {"requests": {"nvidia.com/gpu": 1}}})
    )
    assert "worker.resources.requests: give GPUs with worker.gpu.count" in error


def test_probes_cover_a_cold_engine_build() -> None:
    """The startup probe waits on /readyz for the whole budget (rounded up to a period), liveness
    asks /livez, readiness /readyz, all on the port named metrics."""
    worker = container(
        one(render(CASES["cpu-deployment-defaults"]), "Deployment", "worker"), "worker"
    )
    startup, live, ready = worker["startupProbe"], worker["livenessProbe"], worker["readinessProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert live["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert {"name": "metrics", "containerPort": 9108, "protocol": "TCP"} in worker["ports"]

    custom = values(worker={"probes": {"startupBudgetSeconds": 600, "periodSeconds": 7}})
    startup = container(one(render(custom), "Deployment", "worker"), "worker")["startupProbe"]
    assert startup["failureThreshold"] == math.ceil(600 / 7)


def test_trt_cache_shm_and_tmp_volumes() -> None:
    """The TensorRT cache is a size-limited emptyDir or an existing claim at the cache path the
    worker is told, /dev/shm is memory-backed when asked for, and /tmp is an emptyDir."""
    manifests = render(CASES["gpu-deployment-keda-sasl-ssl"])
    pod = one(manifests, "Deployment", "worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["trt-cache"]["emptyDir"] == {"sizeLimit": "8Gi"}
    cache_dir = config_data(manifests, "worker")["ITMGUARD_TRT_CACHE_DIR"]
    assert mounts["trt-cache"]["mountPath"] == cache_dir
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert volumes["bundle"]["persistentVolumeClaim"] == {
        "claimName": "itmguard-models",
        "readOnly": True,
    }
    assert mounts["bundle"] == {"name": "bundle", "mountPath": "/models", "readOnly": True}
    assert config_data(manifests, "worker")["ITMGUARD_BUNDLE"] == "/models/blip-itm-base"

    sts = one(render(CASES["gpu-statefulset-static-hpa"]), "StatefulSet", "worker")
    claim = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}["trt-cache"]
    assert claim == {
        "name": "trt-cache",
        "persistentVolumeClaim": {"claimName": "itmguard-trt-cache"},
    }
    cpu = worker_workload(render(CASES["cpu-deployment-defaults"]))["spec"]["template"]["spec"]
    assert {v["name"] for v in cpu["volumes"]} == {"tmp", "bundle"}


def test_bundle_from_any_volume_source() -> None:
    """worker.bundle.volume mounts another volume source at /models instead of a claim."""
    nfs = {"nfs": {"server": "files.internal", "path": "/bundles", "readOnly": True}}
    manifests = render(
        merged(REQUIRED, {"worker": {"bundle": {"existingClaim": "", "volume": nfs, "path": ""}}})
    )
    pod = one(manifests, "Deployment", "worker")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["bundle"] == {"name": "bundle", **nfs}
    assert config_data(manifests, "worker")["ITMGUARD_BUNDLE"] == "/models"


SECRET_ENV = (
    "ITMGUARD_DATABASE_URL",
    "ITMGUARD_REVIEW_SECRET",
    "ITMGUARD_KAFKA_SASL_USERNAME",
    "ITMGUARD_KAFKA_SASL_PASSWORD",
)


@pytest.mark.parametrize("case", CASES)
def test_secrets_are_read_by_reference_only(case: str) -> None:
    """Credentials reach the pods as secretKeyRef env only, never through a ConfigMap or a
    literal value, and the Secret is the existing one unless the chart was asked to make one."""
    manifests = render(CASES[case])
    for cm in manifests["ConfigMap"]:
        assert not set(cm["data"]) & set(SECRET_ENV)
        assert "pw@" not in json.dumps(cm["data"])
    expected = SECRET if "existingSecret" in CASES[case]["secrets"] else f"{RELEASE}-secrets"
    for _, spec in pod_specs(manifests):
        for c in spec["containers"]:
            for name, entry in env_of(c).items():
                if name in SECRET_ENV:
                    assert "value" not in entry
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == expected
    assert ("Secret" in manifests) == (case == "cpu-chart-secret-ingress")


def test_chart_made_secret_comes_from_explicit_values_only() -> None:
    """The chart's own Secret holds exactly the given values (rendering twice gives the same),
    and a missing one stops the render instead of being generated."""
    case = CASES["cpu-chart-secret-ingress"]
    first, second = (
        _chart().render(case, name=RELEASE, namespace=NAMESPACE, is_install=True) for _ in range(2)
    )
    assert (
        first[f"{CHART.name}/templates/secret.yaml"]
        == second[f"{CHART.name}/templates/secret.yaml"]
    )
    data = one(render(case), "Secret", "secrets")["stringData"]
    assert data == {
        "database-url": "postgresql+psycopg://itmguard:pw@db:5432/itmguard",
        "review-secret": "r" * 40,
        "kafka-sasl-username": "itmguard",
        "kafka-sasl-password": "kafka-pw",
    }
    manifests = render(case)
    for name in ("worker", "review"):
        annotations = one(manifests, "Deployment", name)["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert len(annotations["checksum/secret"]) == 64
    assert "checksum/secret" not in json.dumps(render(CASES["cpu-deployment-defaults"]))
    missing = merged(case, {"secrets": {"values": {"kafkaSaslPassword": ""}}})
    assert "secrets.values.kafkaSaslPassword is required" in render_error(missing)
    short = merged(case, {"secrets": {"values": {"reviewSecret": "too-short"}}})
    assert "at least 32 characters" in render_error(short)
    both = merged(case, {"secrets": {"existingSecret": SECRET}})
    assert "not both" in render_error(both)


def test_kafka_sasl_and_tls_settings() -> None:
    """With SASL_SSL the worker gets the protocol and mechanism as settings, the credentials from
    the Secret, and the CA and client certificate as files mounted from the TLS Secret."""
    manifests = render(CASES["gpu-deployment-keda-sasl-ssl"])
    data = config_data(manifests, "worker")
    assert data["ITMGUARD_KAFKA_BOOTSTRAP"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert data["ITMGUARD_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["ITMGUARD_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    workload = one(manifests, "Deployment", "worker")
    env = env_of(container(workload, "worker"))
    assert env["ITMGUARD_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET,
        "key": "kafka-sasl-username",
    }
    pod = workload["spec"]["template"]["spec"]
    tls = {v["name"]: v for v in pod["volumes"]}["kafka-tls"]["secret"]
    assert tls["secretName"] == TLS_SECRET
    assert {i["path"]: i["key"] for i in tls["items"]} == {
        "ca.crt": "ca.crt",
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
    }
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["kafka-tls"]
    assert mount["readOnly"] is True
    for setting, file in [("CAFILE", "ca.crt"), ("CERTFILE", "tls.crt"), ("KEYFILE", "tls.key")]:
        assert data[f"ITMGUARD_KAFKA_SSL_{setting}"] == f"{mount['mountPath']}/{file}"

    plain = render(CASES["cpu-deployment-defaults"])
    plain_data = config_data(plain, "worker")
    assert plain_data["ITMGUARD_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not [k for k in plain_data if "SASL" in k or "SSL" in k]
    assert "ITMGUARD_KAFKA_SASL_PASSWORD" not in env_of(
        container(one(plain, "Deployment", "worker"), "worker")
    )


def test_a_config_change_rolls_only_the_pods_that_read_it() -> None:
    """A worker setting changes the worker pods' checksum and not the review page's, and the
    other way round; an unchanged release keeps both."""
    base = render(values())
    worker_change = render(values(worker={"maxBatch": 64}))
    review_change = render(values(review={"order": "age"}))
    assert checksum(base, "Deployment", "worker") == checksum(
        render(values()), "Deployment", "worker"
    )
    assert checksum(worker_change, "Deployment", "worker") != checksum(base, "Deployment", "worker")
    assert checksum(worker_change, "Deployment", "review") == checksum(base, "Deployment", "review")
    assert checksum(review_change, "Deployment", "review") != checksum(base, "Deployment", "review")
    assert checksum(review_change, "Deployment", "worker") == checksum(base, "Deployment", "worker")
    assert config_data(worker_change, "worker")["ITMGUARD_MAX_BATCH"] == "64"


def test_typed_settings_and_extra_env_reach_the_configmap() -> None:
    """Typed values and extraEnv become the worker's ITMGUARD_* settings, large integers are not
    printed in exponent form, and CPU threads follow the CPU limit."""
    manifests = render(
        values(
            logLevel="debug",
            worker={
                "threshold": 0.35,
                "maxWaitMs": 1500,
                "extraEnv": {"ITMGUARD_IMAGE_MAX_BYTES": "20971520"},
                "resources": {"limits": {"cpu": "3500m"}},
            },
        )
    )
    data = config_data(manifests, "worker")
    assert data["ITMGUARD_THRESHOLD"] == "0.35"
    assert data["ITMGUARD_MAX_WAIT_MS"] == "1500"
    assert data["ITMGUARD_IMAGE_MAX_BYTES"] == "20971520"
    assert data["ITMGUARD_LOG_LEVEL"] == "debug"
    assert data["ITMGUARD_METRICS_HOST"] == "0.0.0.0"
    assert data["ITMGUARD_CPU_THREADS"] == "3"
    assert "ITMGUARD_THRESHOLD" not in config_data(render(values()), "worker")
    assert config_data(render(values()), "worker")["ITMGUARD_CPU_THREADS"] == "2"
    pinned = render(values(worker={"cpuThreads": 6}))
    assert config_data(pinned, "worker")["ITMGUARD_CPU_THREADS"] == "6"
    review = config_data(manifests, "review")
    assert review["ITMGUARD_REVIEW_HOST"] == "0.0.0.0"
    assert review["ITMGUARD_REVIEW_PORT"] == "8080"
    assert not [k for k in review if k.startswith("ITMGUARD_KAFKA")]


def test_extra_env_may_not_override_the_chart() -> None:
    """extraEnv repeating a typed setting fails the render; naming a secret fails the schema."""
    error = render_error(values(worker={"extraEnv": {"ITMGUARD_MAX_BATCH": "8"}}))
    assert "worker.extraEnv.ITMGUARD_MAX_BATCH: the chart sets ITMGUARD_MAX_BATCH itself" in error
    error = render_error(values(worker={"extraEnv": {"ITMGUARD_DATABASE_URL": "postgresql://x"}}))
    assert "at '/worker/extraEnv/ITMGUARD_DATABASE_URL': false schema" in error
    error = render_error(values(review={"extraEnv": {"LOG_LEVEL": "debug"}}))
    assert "invalid propertyName 'LOG_LEVEL'" in error


def test_the_migration_job_is_a_bounded_pre_install_hook_on_the_existing_secret() -> None:
    """Migrations run as a pre-install/pre-upgrade hook Job with a negative weight, replaced on
    the next run, bounded in retries and time, reading only the existing Secret; the worker never
    migrates."""
    manifests = render(CASES["cpu-deployment-defaults"])
    job = one(manifests, "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(annotations["helm.sh/hook-weight"]) < 0
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "serviceAccountName" not in pod
    (migrate,) = pod["containers"]
    assert migrate["command"] + migrate["args"] == ["itmguard", "db", "upgrade"]
    assert "envFrom" not in migrate
    refs = [e["valueFrom"]["secretKeyRef"] for e in migrate["env"] if "valueFrom" in e]
    assert refs == [{"name": SECRET, "key": "database-url"}]
    assert "configMap" not in json.dumps(pod)
    for _, spec in pod_specs(manifests):
        for c in spec["containers"]:
            assert c.get("args") != ["db", "upgrade"] or c is migrate
    assert "Job" not in render(CASES["cpu-chart-secret-ingress"])
    error = render_error(
        merged(CASES["cpu-chart-secret-ingress"], {"migrations": {"enabled": True}})
    )
    assert "before the chart's own Secret exists" in error


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


def test_topology_spread_constraints_get_the_pods_selector() -> None:
    """A spread constraint given without a labelSelector is completed with the worker's labels."""
    pod = one(render(CASES["gpu-deployment-keda-sasl-ssl"]), "Deployment", "worker")["spec"][
        "template"
    ]["spec"]
    (constraint,) = pod["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "itmguard",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "worker",
    }
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"


def test_termination_grace_covers_shutdown_grace_a_batch_and_pre_stop() -> None:
    """terminationGracePeriodSeconds is at least 60 s, grows with the shutdown grace, the batch
    time and the preStop sleep, and a value too short for them fails."""

    def grace(**worker: Any) -> int:
        workload = one(render(values(worker=worker)), "Deployment", "worker")
        return int(workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])

    assert grace() == 60
    assert grace(shutdownGraceSeconds=50.5, batchSeconds=30, preStopSleepSeconds=5) == 51 + 30 + 5
    assert grace(terminationGracePeriodSeconds=120) == 120
    workload = one(render(values(worker={"preStopSleepSeconds": 5})), "Deployment", "worker")
    assert container(workload, "worker")["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    error = render_error(values(worker={"terminationGracePeriodSeconds": 30}))
    assert "worker.terminationGracePeriodSeconds (30) is shorter" in error


@pytest.mark.parametrize("case", CASES)
def test_every_pod_meets_the_restricted_pod_security_standard(case: str) -> None:
    """Every pod the chart makes (worker, review page, migration Job, test pods) runs non-root with
    seccomp RuntimeDefault, and every container without privilege escalation or capabilities, on
    a read-only root filesystem with /tmp an emptyDir; no service links or API token."""
    seen = set()
    for name, spec in pod_specs(render(CASES[case])):
        seen.add(name.split("/")[1].removeprefix(f"{RELEASE}-"))
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["enableServiceLinks"] is False
        assert spec["automountServiceAccountToken"] is False
        assert "hostNetwork" not in spec and "hostPID" not in spec
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "add" not in sc["capabilities"]
            assert sc.get("privileged", False) is False
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"worker", "test-metrics"} <= seen


def test_pod_monitor_scrapes_the_metrics_port() -> None:
    """The optional PodMonitor selects the worker pods and scrapes the port named metrics."""
    pm = one(render(CASES["gpu-deployment-keda-sasl-ssl"]), "PodMonitor", "worker")
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert "PodMonitor" not in render(CASES["cpu-deployment-defaults"])


def test_review_page_is_its_own_gpu_free_component() -> None:
    """The review page has its own Deployment, Service, PDB and optional Ingress, serves on
    0.0.0.0 with its session secret from the Secret, probes /healthz, and can be turned off."""
    manifests = render(CASES["cpu-chart-secret-ingress"])
    deployment = one(manifests, "Deployment", "review")
    review = container(deployment, "review")
    assert review["command"] + review["args"] == ["itmguard", "review", "serve"]
    assert deployment["spec"]["replicas"] == 2
    env = env_of(review)
    assert env["ITMGUARD_REVIEW_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-secrets",
        "key": "review-secret",
    }
    assert "ITMGUARD_DATABASE_URL" in env
    assert review["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert review["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in review["ports"]
    service = one(manifests, "Service", "review")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    ingress = one(manifests, "Ingress", "review")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "review.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": "http"},
    }
    off = render(CASES["cpu-statefulset-keda-no-review"])
    assert not [
        m for objects in off.values() for m in objects if m["metadata"]["name"].endswith("-review")
    ]
    assert "Ingress" not in render(CASES["cpu-deployment-defaults"])


def test_helm_test_pods_probe_the_review_page_and_the_worker_metrics() -> None:
    """`helm test` pods fetch the review page's /healthz through its Service and the worker's
    /metrics through the worker Service, with the itmguard image's own Python."""
    manifests = render(CASES["cpu-deployment-defaults"])
    pods = {m["metadata"]["name"]: m for m in manifests["Pod"]}
    assert set(pods) == {f"{RELEASE}-test-review", f"{RELEASE}-test-metrics"}
    urls = {}
    for name, pod in pods.items():
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        (probe,) = pod["spec"]["containers"]
        assert probe["command"][:2] == ["python", "-c"]
        assert probe["image"] == "ghcr.io/itmguard/itmguard:0.1.0"
        urls[name] = env_of(probe)["PROBE_URL"]["value"]
    assert urls[f"{RELEASE}-test-review"] == f"http://{RELEASE}-review.{NAMESPACE}.svc:80/healthz"
    assert (
        urls[f"{RELEASE}-test-metrics"] == f"http://{RELEASE}-worker.{NAMESPACE}.svc:9108/metrics"
    )
    no_review = render(CASES["cpu-statefulset-keda-no-review"])
    assert [m["metadata"]["name"] for m in no_review["Pod"]] == [f"{RELEASE}-test-metrics"]
    assert "Pod" not in render(values(tests={"enabled": False}))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"worker": {"replicas": "two"}}, "at '/worker/replicas': got string, want integer"),
        ({"worker": {"replicaz": 2}}, "additional properties 'replicaz' not allowed"),
        ({"worker": {"kind": "DaemonSet"}}, "at '/worker/kind'"),
        (
            {"worker": {"gpu": {"enabled": "yes"}}},
            "at '/worker/gpu/enabled': got string, want boolean",
        ),
        ({"kafka": {"securityProtocol": "TLS"}}, "at '/kafka/securityProtocol'"),
        ({"autoscaling": {"keda": {"lagThreshold": 0}}}, "at '/autoscaling/keda/lagThreshold'"),
        ({"review": {"port": 70000}}, "at '/review/port'"),
        ({"worker": {"threshold": 1.5}}, "at '/worker/threshold'"),
    ],
)
def test_wrong_values_fail_with_the_schema_message(bad: dict[str, Any], message: str) -> None:
    """A wrong type, an unknown key or an out-of-range value fails with the schema's message."""
    error = render_error(merged(REQUIRED, bad))
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def test_notes_say_how_to_reach_the_release() -> None:
    """NOTES.txt names the worker, the scaling mode, the review page's address and helm test."""
    text = notes(CASES["cpu-chart-secret-ingress"])
    assert "https://review.example.org/" in text
    assert f"helm test {RELEASE} -n {NAMESPACE}" in text
    assert "Migrations are off" in text
    text = notes(CASES["gpu-statefulset-static-hpa"])
    assert "Static membership is on" in text
    assert "HorizontalPodAutoscaler, 2-6 replicas" in text


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values' leaves; a Kubernetes `resources` map counts as one value."""
    if isinstance(node, dict) and node and not prefix.endswith(".resources"):
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_the_chart_readme_lists_every_value() -> None:
    """Every key of values.yaml appears, by its dotted path, in the chart's README table."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [p for p in _leaf_paths(defaults) if f"`{p}`" not in readme]
    assert missing == []


def test_the_schema_describes_every_default_value() -> None:
    """values.schema.json accepts the defaults, and no object it declares takes unknown keys
    unchecked."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)

    def open_objects(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            declared = node.get("type") == "object" and "properties" in node
            if declared and node.get("additionalProperties", True) is True:
                yield path
            for key, value in node.items():
                yield from open_objects(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from open_objects(value, f"{path}/{i}")

    assert list(open_objects(schema, "")) == []
