"""The report's cost sections: where the worker's message time goes (MongoDB, Soketi) and
where the machine's CPU goes (CPU per 1,000 events by process)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bench import usage
from bench.rows import Row, num

# The CPU budget's columns: process name (bench.usage) and column header, in report order.
PROCESS_COLUMNS = (
    (usage.WORKER, "worker"),
    (usage.STANDIN, "MongoDB stand-in"),
    (usage.SOKETI, "Soketi"),
    (usage.RABBITMQ, "RabbitMQ"),
    (usage.BENCH, "bench (publisher + subscribers)"),
)


def mongo(table: Sequence[Row]) -> list[str]:
    """Per-message waiting on MongoDB and Soketi, Soketi calls, MongoDB operations."""
    measured = [row for row in table if row.mongo]
    if not measured:
        return []
    lines = [
        "Where the worker's message time goes (sums of per-message durations from its "
        "/metrics; messages overlap, so these are shares of waiting, not of CPU):",
        "",
        "| path | messages | processing s | MongoDB s | MongoDB share | Soketi s | Soketi share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    operations: dict[str, list[tuple[int, float]]] = {}
    calls: list[str] = []
    for row in measured:
        share = row.mongo[len(row.mongo) // 2]
        total = share.processing_s or float("nan")
        lines.append(
            f"| {row.path} | {share.messages:,} | {share.processing_s:.2f} "
            f"| {share.mongodb_s:.2f} | {share.mongodb_s / total:.0%} "
            f"| {share.soketi_s:.2f} | {share.soketi_s / total:.0%} |"
        )
        if share.soketi_calls:
            calls.append(
                f"{row.path} {share.soketi_calls:,} calls, "
                f"{share.soketi_triggers / share.soketi_calls:.1f} Pusher events per call"
            )
        if row.path == "worker":
            for name, stat in share.operations.items():
                operations.setdefault(name, []).append(stat)
    if calls:
        lines += ["", "Soketi API calls (batch_events of up to 10): " + "; ".join(calls) + "."]
    lines += _documents(table)
    if operations:
        lines += [
            "",
            "MongoDB operations in the `worker` run:",
            "",
            "| operation | queries | mean ms |",
            "|---|---:|---:|",
        ]
        for name, stats in sorted(operations.items()):
            count = sum(c for c, _ in stats)
            if count == 0:
                continue
            seconds = sum(s for _, s in stats)
            mean = seconds / count * 1000 if count else 0.0
            lines.append(f"| {name} | {count:,} | {mean:.2f} |")
    return [*lines, ""]


def _documents(table: Sequence[Row]) -> list[str]:
    """What the worker left in MongoDB per event, by ``fanout_*`` collection."""
    counted = [row for row in table if row.mongo_documents]
    if not counted:
        return []
    names = sorted({name for row in counted for name in row.mongo_documents})
    lines = [
        "",
        "Documents in the run's `fanout_*` collections after each worker path, per event "
        "(a document written and then updated counts once):",
        "",
        "| path | " + " | ".join(names) + " | total |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for row in counted:
        cells = [num(row.mongo_documents.get(name, 0) / row.events, 2) for name in names]
        lines.append(
            f"| {row.path} | " + " | ".join(cells) + f" | {num(row.mongo_documents_per_event, 2)} |"
        )
    return lines


def cpu_budget(table: Sequence[Row]) -> list[str]:
    """CPU per 1,000 events by process, their total and the machine ceiling, per path."""
    measured = [row for row in table if row.process_cpu_s_per_1k]
    if not measured:
        return []
    cores = os.cpu_count() or 1
    header = ["path", *(title for _, title in PROCESS_COLUMNS), "total", "machine ceiling events/s"]
    lines = [
        "Where the machine's CPU goes: CPU seconds (user + system, /proc/<pid>/stat) per "
        "1,000 events, by process, over each worker path's measured window:",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in measured:
        cpu = row.process_cpu_s_per_1k
        total = sum(cpu.values())
        ceiling = cores * 1000 / total if total > 0 else None
        cells = [row.path, *(num(cpu.get(name), 2) for name, _ in PROCESS_COLUMNS)]
        cells += [f"{total:.2f}", num(ceiling)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The machine ceiling, {cores} cores x 1,000 / total, is the rate at which these "
        "processes together would need every core, and an estimate: the CPU spent per event by "
        "everything that runs on this box, not counting the kernel's softirq time or other "
        "processes.",
    ]
    return [*lines, ""]
