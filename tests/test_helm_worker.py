"""The chart's worker: Deployment or StatefulSet, GPU or CPU, probes, volumes, rollout and
shutdown."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.helm_render import (
    CASES,
    GPU_CASES,
    RELEASE,
    REQUIRED,
    config_data,
    container,
    env_of,
    merged,
    one,
    pod_specs,
    render,
    render_error,
    values,
    worker_workload,
)


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
