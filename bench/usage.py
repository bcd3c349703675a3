"""What the worker and its neighbours cost: CPU seconds and memory, read from ``/proc``.

The names below (:data:`WORKER`, :data:`STANDIN`, ...) key :attr:`Usage.processes` and the
report's CPU-budget columns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import Services

# The processes whose CPU a run's budget counts: the worker, and the others whose CPU
# ``Usage.processes`` holds.
WORKER, STANDIN, SOKETI, RABBITMQ, BENCH = "worker", "standin", "soketi", "rabbitmq", "bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and memory of the worker at one moment, and the CPU
    seconds of the other processes of the run then (name -> pid -> seconds)."""

    cpu_s: float
    rss_kb: int
    hwm_kb: int
    processes: dict[str, dict[int, float]] = field(default_factory=dict)


def usage_of(pid: int, services: Services) -> Usage:
    """Process ``pid``'s CPU seconds so far, current and peak resident memory; and the
    other processes' CPU seconds (:func:`process_cpu`)."""
    status = Path(f"/proc/{pid}/status").read_text()
    memory = {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return Usage(
        cpu_seconds(pid),
        memory.get("VmRSS", 0),
        memory.get("VmHWM", 0),
        process_cpu(services),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def broker_pids() -> list[int]:
    """The local RabbitMQ's Erlang VM(s): every ``beam.smp`` in ``/proc`` (none if remote)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "beam.smp":
                pids.append(int(comm.parent.name))
    return pids


def process_cpu(services: Services) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the MongoDB stand-in (when it runs here), Soketi, RabbitMQ and
    this process (publisher and subscribers), by pid; a process that can't be read is left
    out."""
    pids: dict[str, Sequence[int | None]] = {
        STANDIN: [services.standin.pid] if services.standin is not None else [],
        SOKETI: [services.soketi.pid],
        RABBITMQ: broker_pids(),
        BENCH: [os.getpid()],
    }
    snapshot: dict[str, dict[int, float]] = {}
    for name, candidates in pids.items():
        seconds: dict[int, float] = {}
        for pid in candidates:
            if pid is None:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                seconds[pid] = cpu_seconds(pid)
        if seconds:
            snapshot[name] = seconds
    return snapshot
