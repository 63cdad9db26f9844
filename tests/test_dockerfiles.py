"""The two images, checked statically: Docker is not available here to build them.

`Dockerfile` is the CPU image (Python slim, the `cpu` extra), `Dockerfile.gpu` the GPU image (an
NVIDIA CUDA runtime base, the `gpu` extra). Both must run as a numeric non-root user with every
writable path under a VOLUME, so that the Helm chart can make the root filesystem read-only.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {"Dockerfile": "cpu", "Dockerfile.gpu": "gpu"}
FORBIDDEN_EXTRAS = {"export", "starter", "dev", "demo"}


@dataclass
class Stage:
    """One build stage: its base, its name and its instructions as (keyword, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        """The ENV values this stage sets (key=value form), later ones winning."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {args!r} is not in key=value form"
                values[key] = value
        return values


def parse(name: str) -> list[Stage]:
    """The stages of the Dockerfile `name`, continuation lines joined and comments dropped."""
    text = (ROOT / name).read_text()
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{name} ends in a continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=alias))
        else:
            assert stages, f"{name}: {keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def final(name: str) -> Stage:
    return parse(name)[-1]


def install_lines(name: str) -> list[str]:
    """The RUN lines of `name` that install Python packages."""
    return [
        args
        for stage in parse(name)
        for args in stage.all("RUN")
        if re.search(r"\b(pip|uv pip) install\b", args)
    ]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `path` out of the build context (last match wins,
    and a pattern that matches a parent folder matches what is inside it)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.removeprefix("!").strip("/"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", IMAGES)
def test_every_base_image_is_pinned_to_a_version_tag(name: str) -> None:
    """Every FROM names an earlier stage or an image with a version tag (or a digest), never an
    untagged image or `latest`."""
    stages = parse(name)
    assert len(stages) >= 2, "build in one stage, run from a clean one"
    names: set[str] = set()
    for stage in stages:
        if stage.base in names:
            continue
        image, _, digest = stage.base.partition("@")
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert "/" not in tag, f"{stage.base}: the colon belongs to a registry port, not a tag"
        assert tag or digest.startswith("sha256:"), f"{stage.base} is not pinned"
        assert tag != "latest", f"{stage.base} floats"
        if tag:
            assert re.match(r"^v?\d+\.\d+(\.\d+)?", tag), f"{stage.base}: tag is not a version"
        if stage.name:
            names.add(stage.name)
    for args in (a for stage in stages for a in stage.all("COPY") if a.startswith("--from=")):
        source = args.split()[0].removeprefix("--from=")
        assert source in names, f"COPY --from={source} names no stage"


def test_the_bases_are_python_311_slim_and_cuda_12_base() -> None:
    """The CPU image runs on a Python slim image of the Python version the package requires, and
    the GPU image on CUDA 12's base image for Ubuntu 24.04 (the GPU libraries come from wheels)
    with that Python installed by uv."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    for stage in parse("Dockerfile"):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.base)
    gpu = parse("Dockerfile.gpu")
    runtime = [s.base for s in gpu if s.base.startswith("nvidia/cuda:")]
    assert len(runtime) == 2
    for base in runtime:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-base-ubuntu24\.04", base)
    uv = [s.base for s in gpu if s.base.startswith("ghcr.io/astral-sh/uv:")]
    assert len(uv) == 1
    runs = " ".join(args for s in gpu for args in s.all("RUN"))
    assert "uv python install 3.11" in runs
    assert "uv venv --python 3.11" in runs


@pytest.mark.parametrize("name", IMAGES)
def test_the_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    """The last USER of the final stage is a numeric uid:gid other than root, and the chart's
    default podSecurity matches it."""
    users = final(name).all("USER")
    assert users, f"{name} runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), "numeric, so that runAsNonRoot can check it"
    assert int(uid) > 0 and int(gid) > 0
    chart = yaml.safe_load((ROOT / "helm" / "itmguard" / "values.yaml").read_text())
    assert chart["podSecurity"]["runAsUser"] == int(uid)
    assert chart["podSecurity"]["runAsGroup"] == int(gid)


@pytest.mark.parametrize(("name", "extra"), IMAGES.items())
def test_the_image_installs_its_own_extra_and_nothing_heavier(name: str, extra: str) -> None:
    """The CPU image installs `.[cpu]`, the GPU image `.[gpu]`; neither installs the export,
    starter, dev or demo extras, nor torch."""
    lines = install_lines(name)
    assert lines
    extras = {
        group.strip()
        for line in lines
        for match in re.finditer(r"\.\[([^\]]*)\]", line)
        for group in match.group(1).split(",")
    }
    assert extras == {extra}
    assert not extras & FORBIDDEN_EXTRAS
    text = (ROOT / name).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "torch" not in code
    assert not re.search(r"\[(?:[^\]]*,)?\s*(export|starter|dev|demo)\s*[,\]]", code)


@pytest.mark.parametrize("name", IMAGES)
def test_every_writable_path_is_a_volume(name: str) -> None:
    """/tmp (Faust's data directory, HOME) and the TensorRT cache are VOLUMEs, so the root
    filesystem can be read-only; ITMGUARD_TRT_CACHE_DIR points under one."""
    stage = final(name)
    volumes = [v for args in stage.all("VOLUME") for v in json.loads(args)]
    assert "/tmp" in volumes
    env = stage.env()

    def under_a_volume(path: str) -> bool:
        return any(path == v or path.startswith(v.rstrip("/") + "/") for v in volumes)

    assert env["ITMGUARD_TRT_CACHE_DIR"] == "/var/cache/itmguard/tensorrt"
    assert under_a_volume(env["ITMGUARD_TRT_CACHE_DIR"])
    assert under_a_volume(env["HOME"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.parametrize("name", IMAGES)
def test_the_entrypoint_is_itmguard_and_the_default_command_the_worker(name: str) -> None:
    """ENTRYPOINT is `itmguard` and CMD `worker`, both in exec form, from a venv on PATH."""
    stage = final(name)
    assert json.loads(stage.all("ENTRYPOINT")[-1]) == ["itmguard"]
    assert json.loads(stage.all("CMD")[-1]) == ["worker"]
    assert stage.env()["PATH"].startswith("/opt/venv/bin:")
    assert any(a.split()[1:] == ["/opt/venv", "/opt/venv"] for a in stage.all("COPY"))


def test_the_gpu_image_installs_the_gpu_checks_pins() -> None:
    """The GPU image installs exactly the pins of benchmarks/gpu-requirements.txt, which
    benchmarks/gpu_check.sh measures: a CUDA 12 onnxruntime-gpu with its CUDA and cuDNN wheels,
    and TensorRT 10."""
    (line,) = install_lines("Dockerfile.gpu")
    pins = [
        req.strip()
        for req in (ROOT / "benchmarks" / "gpu-requirements.txt").read_text().splitlines()
        if req.strip() and not req.startswith("#")
    ]
    assert pins == ["onnxruntime-gpu[cuda,cudnn]==1.26.0", "tensorrt-cu12-libs==10.16.1.11"]
    for pin in pins:
        assert f"'{pin}'" in line


def test_the_gpu_image_puts_every_gpu_wheels_libraries_on_the_library_path() -> None:
    """TensorRT's and each CUDA and cuDNN wheel's library folder is on LD_LIBRARY_PATH, where
    ONNX Runtime's providers look for them."""
    paths = final("Dockerfile.gpu").env()["LD_LIBRARY_PATH"].split(":")
    site = "/opt/venv/lib/python3.11/site-packages"
    assert f"{site}/tensorrt_libs" in paths
    for wheel in ("cudnn", "cublas", "cuda_runtime", "cuda_nvrtc", "cufft", "curand"):
        assert f"{site}/nvidia/{wheel}/lib" in paths


@pytest.mark.parametrize("name", IMAGES)
def test_what_the_build_copies_is_in_the_context(name: str) -> None:
    """Every file or folder the Dockerfile copies from the context exists and is not left out
    by .dockerignore."""
    patterns = dockerignore()
    sources = [
        source
        for stage in parse(name)
        for args in stage.all("COPY")
        if not args.startswith("--")
        for source in args.split()[:-1]
    ]
    assert "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source.rstrip("/"), patterns), source


def test_dockerignore_keeps_the_venv_tests_and_caches_out() -> None:
    """The build context holds the package's sources only: no virtualenv, tests, test data,
    caches, git history or chart."""
    patterns = dockerignore()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_helm.py",
        "tests/data/README.md",
        ".hypothesis/examples/x",
        ".mypy_cache/3.11/x.json",
        "worker/__pycache__/cli.cpython-311.pyc",
        "helm/itmguard/Chart.yaml",
        "itmguard.egg-info/PKG-INFO",
        "docs/settings.md",
    ]:
        assert _ignored(path, patterns), path
    for path in ["pyproject.toml", "README.md", "worker/cli.py", "migrations/env.py"]:
        assert not _ignored(path, patterns), path
