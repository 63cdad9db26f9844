"""The tree shows the architecture: what each part may import, and how large a module may grow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MAX_MODULE_LINES = 400

CORE = [
    "worker.bundle",
    "worker.events",
    "worker.images",
    "worker.judge",
    "worker.messages",
    "worker.preprocess",
    "worker.scoring",
    "worker.verdicts",
]
"""The scoring core: plain functions on plain data, no Faust, SQL or HTTP."""


def _modules(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in base.rglob("*.py")
    )


def _import_with_blocked(
    modules: list[str], blocked: list[str]
) -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter in which every module of `blocked` fails to
    import, as it would where it is not installed."""
    script = (
        "import importlib, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        f"{sorted({b.split('.')[0] for b in blocked})!r} and sys.modules[n] is not None))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_runtime_imports_without_torch_or_export() -> None:
    """Every module of `worker` outside `worker.demo` imports where torch, transformers and
    the export package cannot be imported."""
    # worker.faustapp builds the app from the environment when imported, for `faust -A`
    runtime = [
        m for m in _modules("worker") if not m.startswith("worker.demo") and m != "worker.faustapp"
    ]
    assert "worker.review.web" in runtime and "worker.agents" in runtime
    done = _import_with_blocked(runtime, ["torch", "transformers", "export"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_scoring_core_imports_without_faust_sql_or_http() -> None:
    """The scoring core imports where Faust, aiokafka, SQLAlchemy, aiohttp and psycopg cannot."""
    done = _import_with_blocked(
        CORE, ["faust", "mode", "aiokafka", "sqlalchemy", "psycopg", "aiohttp", "alembic"]
    )
    assert done.returncode == 0, done.stderr


def test_the_command_line_lists_every_command_without_torch_or_export() -> None:
    """`itmguard --help` works without the export step; asking for an export command there
    says why it cannot run instead of a traceback."""
    script = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'export'):\n"
        "    sys.modules[name] = None\n"
        "from worker.cli import main\n"
        "sys.argv = ['itmguard'] + sys.argv[1:]\n"
        "main()\n"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, "--help"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    for command in ("worker", "score", "db", "review", "demo", "export", "calibrate", "compare"):
        assert f"  {command} " in listed.stdout
    refused = subprocess.run(
        [sys.executable, "-c", script, "export", "blip", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "`itmguard export` cannot load" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("package", ["worker", "export", "benchmarks", "migrations"])
def test_no_module_is_over_the_size_limit(package: str) -> None:
    """No module grows past MAX_MODULE_LINES lines: past that, it holds more than one job."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in (ROOT / package).rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_benchmarks_do_not_import_the_tests() -> None:
    """Benchmarks take shared generators from `worker.testing`, never from `tests`."""
    offenders = []
    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                offenders.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.name}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "tests"
                ]
    assert offenders == []
