"""A real local multi-node Ray cluster for the tests (Ray's ``Cluster``: a head with no CPUs
and one-CPU worker nodes, as separate raylets on this machine), and checks that every process
Ray started is gone afterwards."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.cluster_utils import Cluster


@contextmanager
def local_cluster(workers: int) -> Iterator[Cluster]:
    """The cluster, with this process connected to it; shut down and checked on exit."""
    # Node and actor death are noticed in ~1.5 s instead of Ray's default 15 s.
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    local = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": health},
    )
    try:
        for _ in range(workers):
            local.add_node(num_cpus=1)
        local.wait_for_nodes()
        ray.init(address=local.address, logging_level="WARNING")
        yield local
    finally:
        ray.shutdown()
        local.shutdown()
        assert_no_children_left()


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we may read (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry)] = (parent, command.decode(errors="replace"))
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [p for p, (parent, _) in table.items() if parent == pid]
        found += children
        todo += children
    return found


def assert_no_children_left(wait_s: float = 20.0) -> None:
    """Ray's processes, started by this test process, are all gone after shutdown."""
    deadline = time.monotonic() + wait_s
    while descendants(os.getpid(), processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = descendants(os.getpid(), processes())
    assert not left, f"processes left after Ray shut down: {left}"
