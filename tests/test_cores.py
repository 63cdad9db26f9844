"""The usable core count that sizes the decode pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.cores import usable_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),
        ("150000 100000\n", min(AFFINITY, 2)),
        ("50000 100000\n", 1),
        ("not a quota\n", AFFINITY),
    ],
)
def test_the_cgroup_quota_caps_the_affinity(tmp_path: Path, cpu_max: str, expected: int) -> None:
    """A CPU limit of 1.5 cores gives 2 threads, half a core gives 1, no limit (or one that
    cannot be read) leaves the process's affinity."""
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    assert usable_cores(quota) == expected


def test_without_a_cgroup_file_the_affinity_counts(tmp_path: Path) -> None:
    """Outside a cgroup v2 container the affinity is the answer."""
    assert usable_cores(tmp_path / "absent") == AFFINITY
