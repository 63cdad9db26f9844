"""`itmguard demo`: the whole pipeline on embedded services, and its cleanup."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from worker.bundle import load_bundle
from worker.demo.report import Row, Sample, Totals, format_table, write_report
from worker.demo.run import DemoOptions, run_demo, starter_bundle, starter_path
from worker.testing import shape_image

pytestmark = pytest.mark.integration


def _children_alive(pids: list[int]) -> list[int]:
    return [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


def test_demo_runs_twice_and_reports(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two runs on one work folder both score every sample, and the report escapes captions."""
    samples = [
        Sample(shape_image("red", "circle", seed=i), f"<b>caption {i}</b>", i % 2 == 0, "generated")
        for i in range(6)
    ]
    options = DemoOptions(workdir=tmp_path / "demo", bundle=tiny_bundle, timeout_s=120)
    for _ in range(2):
        lines: list[str] = []
        rows = run_demo(options, lambda _: tiny_bundle, samples, echo=lines.append)
        assert [r.sample for r in rows] == samples
        assert all(r.verdict in ("match", "mismatch") and r.score is not None for r in rows)
        assert "database: stopping" in lines and "broker: stopping" in lines
    assert "6 posts:" in format_table(rows)
    html = write_report(rows, tmp_path / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 6
    assert "&lt;b&gt;caption 0&lt;/b&gt;" in html and "<b>caption" not in html
    assert f"model {load_bundle(tiny_bundle).spec.model_id} ·" in html


def test_totals_count_verdicts_and_agreement_in_table_and_report(tmp_path: Path) -> None:
    """The table's last line and the report's header give the same counts; errors never agree."""
    image = shape_image("blue", "square", seed=1)
    rows = [
        Row("p0", Sample(image, "a", True, "generated"), 0.9, "match", None, "m@1"),
        Row("p1", Sample(image, "b", False, "generated"), 0.8, "match", None, "m@1"),
        Row("p2", Sample(image, "c", False, "generated"), 0.1, "mismatch", None, "m@1"),
        Row(
            "p3", Sample(image, "d", True, "generated"), None, "error", "image_decode_failed", "m@1"
        ),
    ]
    totals = Totals.of(rows)
    assert totals == Totals(posts=4, match=2, mismatch=1, error=1, agreed=2)
    line = "4 posts: 2 match, 1 mismatch, 1 error; 2 of 4 (50%) as the caption's author intended"
    assert format_table(rows).splitlines()[-1] == line
    html = write_report(rows, tmp_path / "report.html").read_text()
    assert ">2 match<" in html and ">1 mismatch<" in html and ">1 error<" in html
    assert "2 of 4 verdicts as the caption's author intended" in html
    assert "model m@1 ·" in html


def test_cached_starter_bundle_is_reused_and_earlier_recipes_removed(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A bundle at this recipe's path is used as it is; one of an earlier recipe is deleted."""
    bundles = tmp_path / "bundles"
    current = starter_path(bundles)
    assert current.parent == bundles and re.fullmatch(r"starter-[0-9a-f]{12}", current.name)
    assert starter_path(bundles) == current
    shutil.copytree(tiny_bundle, current)
    (bundles / "starter-1").mkdir()
    lines: list[str] = []
    assert starter_bundle(bundles, echo=lines.append) == current
    assert sorted(p.name for p in bundles.iterdir()) == [current.name]
    assert lines[-1] == f"model: starter bundle from {current}"
    assert any("removing" in line and "starter-1" in line for line in lines)


def test_sigterm_stops_everything_the_demo_started(tiny_bundle: Path, tmp_path: Path) -> None:
    """SIGTERM in the middle of a demo ends it with status 130 and leaves no process behind."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--bundle",
            str(tiny_bundle),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("worker: started"):
            break
    started = psutil.Process(proc.pid).children(recursive=True)
    assert started, "".join(seen)
    proc.send_signal(signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(60) == 130, output
    assert "interrupted" in output
    deadline = time.monotonic() + 15
    while _children_alive([p.pid for p in started]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children_alive([p.pid for p in started]) == []
    data = tmp_path / "demo" / "pgdata"
    postgres = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data) in " ".join(p.info["cmdline"] or [])
    ]
    assert postgres == [], "the demo's Postgres is still running"
    assert os.path.exists(data / "PG_VERSION")


def test_demo_review_serves_the_moderators_page_until_interrupted(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """`demo --review` prints the page's address and a demo moderator's password, which signs
    in to the queue of the demo's posts; Ctrl-C then stops everything and exits 0."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--bundle",
            str(tiny_bundle),
            "--review",
            "--review-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "sign in as" in line:
            break
    printed = "".join(seen)
    url = re.search(r"review page: (http://\S+)/review", printed)
    password = re.search(r"sign in as demo with password (\S+)", printed)
    assert url and password, printed
    started = psutil.Process(proc.pid).children(recursive=True)
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    login = opener.open(url.group(1) + "/login").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    assert csrf
    form = {"csrf": csrf.group(1), "username": "demo", "password": password.group(1)}
    queue = opener.open(url.group(1) + "/login", urllib.parse.urlencode(form).encode())
    page = queue.read().decode()
    assert queue.geturl().endswith("/review") and "Review queue" in page
    pending = re.search(r'id="stat-pending">(\d+)<', page)
    flagged = re.search(r"posts: \d+ match, (\d+) mismatch", printed)
    assert pending and flagged and pending.group(1) == flagged.group(1), printed
    proc.send_signal(signal.SIGINT)
    output = proc.stdout.read()
    assert proc.wait(60) == 0, output
    assert "review page: stopping" in output and "database: stopping" in output
    deadline = time.monotonic() + 15
    while _children_alive([p.pid for p in started]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children_alive([p.pid for p in started]) == []
