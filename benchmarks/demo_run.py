"""Wall time and peak memory of `itmguard demo`, first run and cached run.

The demo runs as a child process in a new work folder; every 0.2 s this script
sums the memory of everything the demo started: the worker, the `tansu` broker
and the embedded PostgreSQL. PostgreSQL's server detaches from the process
that starts it, so this script makes itself a child subreaper (Linux) to keep
it in the tree. Memory is given as PSS (shared pages split between the
processes that share them, so the sum is what the machine gives up) and as
the largest RSS per program.

    .venv/bin/python -m benchmarks.demo_run [--runs 2]

The first run builds the starter bundle and initialises the database; later
runs reuse both, as a newcomer's second `itmguard demo` does.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_CHILD_SUBREAPER = 36
_MIB = 1024 * 1024


@dataclass
class Peak:
    """Largest figures seen while sampling one demo run."""

    pss_total: int = 0
    rss_by_program: dict[str, int] = field(default_factory=dict)
    processes: int = 0

    def sample(self, root: psutil.Process) -> None:
        pss = 0
        tree = [root, *root.children(recursive=True)]
        for process in tree:
            try:
                info = process.memory_full_info()
                program = _program(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss += info.pss
            self.rss_by_program[program] = max(self.rss_by_program.get(program, 0), info.rss)
        self.pss_total = max(self.pss_total, pss)
        self.processes = max(self.processes, len(tree))


def _program(process: psutil.Process) -> str:
    """What a process is, by the program it runs: the demo itself, its worker, tansu, postgres."""
    cmdline = process.cmdline()
    name = process.name()
    if "worker" in cmdline:
        return "worker"
    if "demo" in cmdline:
        return "demo"
    return name


def _run_once(command: list[str], every_s: float) -> tuple[float, Peak, int]:
    peak = Peak()
    started = time.monotonic()
    demo = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak.sample(root)
            done.wait(every_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = demo.wait()
    wall = time.monotonic() - started
    done.set()
    watcher.join()
    return wall, peak, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="first run, then cached runs")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples")
    args = parser.parse_args()

    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed: this benchmark needs Linux")
    itmguard = Path(sys.executable).with_name("itmguard")
    workdir = Path(tempfile.mkdtemp(prefix="itmguard-demo-bench-", dir="/var/tmp"))
    code = -1
    try:
        for run in range(1, args.runs + 1):
            command = [str(itmguard), "demo", "--workdir", str(workdir)]
            wall, peak, code = _run_once(command, args.every)
            kind = "cached" if run > 1 else "first run (builds the model, initialises the database)"
            programs = ", ".join(
                f"{name} {rss / _MIB:.0f}"
                for name, rss in sorted(peak.rss_by_program.items(), key=lambda kv: -kv[1])
            )
            print(
                f"run {run}, {kind}: exit {code}, wall {wall:.1f} s, "
                f"peak PSS of all demo processes {peak.pss_total / _MIB:.0f} MiB "
                f"({peak.processes} processes at most)"
            )
            print(f"  largest RSS per program, MiB: {programs}")
            if code != 0:
                sys.exit(f"the demo failed; its logs are in {workdir / 'logs'}")
    finally:
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
