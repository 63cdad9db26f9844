"""How many cores this process may use: what sizes the decode pool.

`os.cpu_count()` counts the machine's cores; in a container that is the
node's, not the pod's share. The usable count is the process's CPU affinity,
capped by the cgroup's CPU quota (`cpu.max`) when one is set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["CGROUP_CPU_MAX", "usable_cores"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process can keep busy: its affinity, capped by the cgroup v2 quota
    (rounded up, so a limit of 1.5 cores gives 2); at least 1."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        pass  # no cgroup v2 limit to read: the affinity stands
    return max(cores, 1)
