"""The host's CPUs as the GPU benchmarks see them (Linux /proc and /sys; empty figures elsewhere): disjoint
core sets to pin servers to, the CPU time a server's processes used, and the cgroup's CPU throttling.

A launch-bound workload (eager prefills, NGRAM's synchronous draft) runs as fast as its scheduler's CPU:
these figures, taken around each round, say whether a traced server used more CPU (its exporter processes
are in their own session, children of the SGLang processes) and whether the container's CPU quota
throttled anyone while the round ran.
"""
from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def core_sets(n: int) -> list[str]:
    """This process's CPUs split into ``n`` disjoint sets of whole physical cores (hyperthread siblings kept
    together), as ``taskset -c`` lists; empty when there are fewer cores than sets."""
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:
            key = ("", str(cpu))
        cores.setdefault(key, []).append(cpu)
    groups, per = list(cores.values()), len(cores) // max(n, 1)
    if per < 1:
        return []
    return [",".join(str(c) for g in groups[i * per:(i + 1) * per] for c in g) for i in range(n)]


def _stats() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, process group, CPU seconds) of every process we can read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def server_cpu(pgids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per server (by the process group its launch made): CPU seconds so far of its processes, and of the
    processes they started in sessions of their own (our exporters)."""
    stats = _stats()
    out = {}
    for name, pgid in pgids.items():
        own = {pid for pid, (_, group, _) in stats.items() if group == pgid}
        children = {pid for pid, (parent, group, _) in stats.items() if parent in own and group != pgid}
        out[name] = {"server_s": sum(stats[p][2] for p in own), "children_s": sum(stats[p][2] for p in children)}
    return out


def throttling() -> dict[str, int]:
    """The cgroup's CPU throttling counters (v2 ``cpu.stat``, or v1's), or {} where there are none."""
    for path in ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat", "/sys/fs/cgroup/cpu,cpuacct/cpu.stat"):
        try:
            lines = Path(path).read_text().split("\n")
        except OSError:
            continue
        pairs = dict(line.split() for line in lines if len(line.split()) == 2)
        return {k: int(v) for k, v in pairs.items() if k.startswith(("nr_periods", "nr_throttled", "throttled"))}
    return {}


def delta(before: dict, after: dict) -> dict:
    """``after - before``, key by key (nested one level)."""
    out = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = {k: round(v - before.get(key, {}).get(k, 0), 3) for k, v in value.items()}
        elif key in before:
            out[key] = value - before[key]
    return out
