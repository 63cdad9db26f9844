"""The chart's settings and secrets: the ConfigMap and its checksums, secrets by reference,
Kafka TLS and SASL, and the migration hook."""

from __future__ import annotations

import json

import pytest

from tests.helm_render import (
    CASES,
    CHART,
    NAMESPACE,
    RELEASE,
    SECRET,
    TLS_SECRET,
    _chart,
    checksum,
    config_data,
    container,
    env_of,
    merged,
    one,
    pod_specs,
    render,
    render_error,
    values,
)

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


def test_a_shadow_bundle_is_a_directory_of_the_bundle_volume() -> None:
    """worker.shadow names a second directory under /models, with its own threshold and
    wait; without a path the worker gets no shadow settings at all."""
    shadowed = render(values(worker={"shadow": {"path": "/blip-itm-base@4/", "threshold": 0.42}}))
    data = config_data(shadowed, "worker")
    assert data["ITMGUARD_SHADOW_BUNDLE"] == "/models/blip-itm-base@4"
    assert data["ITMGUARD_SHADOW_THRESHOLD"] == "0.42"
    assert data["ITMGUARD_SHADOW_WAIT_S"] == "2"
    plain = config_data(render(values()), "worker")
    assert not [k for k in plain if k.startswith("ITMGUARD_SHADOW")]


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
