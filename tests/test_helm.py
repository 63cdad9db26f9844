"""The Helm chart in helm/itmguard as a whole: every object valid, strict lint, labels, pod
security, the values schema and README, NOTES, the review page, `helm test` pods, monitoring.

Rendering is offline (`tests/helm_render.py`): no cluster and no `helm` binary exist here.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm_render import (
    CASES,
    CHART,
    CRD_SCHEMA_FILES,
    CRD_SCHEMAS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REQUIRED,
    container,
    env_of,
    merged,
    notes,
    one,
    pod_specs,
    render,
    render_error,
    values,
)


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
