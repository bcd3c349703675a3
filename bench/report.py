"""Turn the runs' results into the Markdown report: table, ratios, targets, MongoDB share."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import usage
from bench.paths import MongoShare, Result

# The targets: worker throughput / baseline, and latency at a steady 500 events/s.
RATIO_TARGETS = (("sync-trigger", 5.0), ("direct-32", 2.0), ("aio-pika-bare", 0.5))
P50_TARGET_MS = 10.0
P99_TARGET_MS = 50.0
RSS_TARGET_MB = 150.0
# The CPU budget's columns: process name (bench.usage) and column header, in report order.
PROCESS_COLUMNS = (
    (usage.WORKER, "worker"),
    (usage.STANDIN, "MongoDB stand-in"),
    (usage.SOKETI, "Soketi"),
    (usage.RABBITMQ, "RabbitMQ"),
    (usage.BENCH, "bench (publisher + subscribers)"),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One path, medians over runs (lost and duplicated summed over runs)."""

    path: str
    events: int
    rate: float | None
    e2e_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    cpu_s_per_1k: float | None
    peak_rss_mb: float | None
    process_cpu_s_per_1k: dict[str, float]  # medians over the runs that measured each
    lost: int
    duplicated: int
    runs: int
    note: str
    mongo: list[MongoShare]


def rows(results: Sequence[Result]) -> list[Row]:
    """Group results by path (first-seen order) into median rows."""
    by_path: dict[str, list[Result]] = {}
    for result in results:
        by_path.setdefault(result.path, []).append(result)
    return [_row(path, group) for path, group in by_path.items()]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _row(path: str, group: list[Result]) -> Row:
    def med(get: Callable[[Result], float | None]) -> float | None:
        return _median([get(r) for r in group])

    return Row(
        path=path,
        events=group[0].events,
        rate=med(lambda r: r.rate),
        e2e_rate=med(lambda r: r.e2e_rate),
        p50_ms=med(lambda r: r.percentile_ms(0.50)),
        p95_ms=med(lambda r: r.percentile_ms(0.95)),
        p99_ms=med(lambda r: r.percentile_ms(0.99)),
        cpu_s_per_1k=med(lambda r: r.cpu_s_per_1k),
        peak_rss_mb=max((r.peak_rss_mb for r in group if r.peak_rss_mb), default=None),
        process_cpu_s_per_1k=_process_medians(group),
        lost=sum(r.lost for r in group),
        duplicated=sum(r.duplicated for r in group),
        runs=len(group),
        note=group[0].note + (" (first run)" if len(group) > 1 and group[0].note else ""),
        mongo=[r.mongo for r in group if r.mongo is not None],
    )


def _process_medians(group: list[Result]) -> dict[str, float]:
    """Each process's median CPU per 1,000 events over the runs that measured it."""
    names = dict.fromkeys(name for r in group for name in r.process_cpu_s_per_1k)
    return {
        name: statistics.median(
            [r.process_cpu_s_per_1k[name] for r in group if name in r.process_cpu_s_per_1k]
        )
        for name in names
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def baseline_suffix(ref: str) -> str:
    """What a path measured with the ``--baseline-ref`` worker is called: ``worker @REF``."""
    return f" @{ref}"


def render(header: Sequence[str], table: Sequence[Row]) -> str:
    """The whole report as Markdown."""
    lines = [*header, "", *_table(table), ""]
    lines += _paired(table)
    lines += _ratios(table)
    lines += _targets(table)
    lines += _mongo(table)
    lines += _cpu_budget(table)
    return "\n".join(lines) + "\n"


def _table(table: Sequence[Row]) -> list[str]:
    lines = [
        "| path | events | events/s | e2e events/s | p50 ms | p95 ms | p99 ms "
        "| worker CPU s/1k events | worker peak RSS MB | lost | duplicated | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in table:
        lines.append(
            f"| {row.path} | {row.events:,} | {_num(row.rate)} | {_num(row.e2e_rate)} "
            f"| {_num(row.p50_ms, 1)} | {_num(row.p95_ms, 1)} | {_num(row.p99_ms, 1)} "
            f"| {_num(row.cpu_s_per_1k, 2)} | {_num(row.peak_rss_mb, 1)} "
            f"| {row.lost} | {row.duplicated} | {row.note} |"
        )
    return lines


def _paired(table: Sequence[Row]) -> list[str]:
    """This worker against the ``--baseline-ref`` worker, path by path, same runs."""
    pairs = [
        (current, row)
        for row in table
        if " @" in row.path and (current := _find(table, row.path.split(" @")[0])) is not None
    ]
    if not pairs:
        return []
    lines = [
        "This worker ÷ the baseline worker, paired in the same runs (alternating which went "
        "first):",
        "",
        "| path | events/s | baseline events/s | ratio | worker CPU s/1k | baseline CPU s/1k "
        "| ratio | p50 ms | baseline p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for current, other in pairs:
        rate, base_rate = current.e2e_rate or current.rate, other.e2e_rate or other.rate
        lines.append(
            f"| {current.path} vs {other.path} | {_num(rate)} | {_num(base_rate)} "
            f"| {_ratio(rate, base_rate)} | {_num(current.cpu_s_per_1k, 2)} "
            f"| {_num(other.cpu_s_per_1k, 2)} "
            f"| {_ratio(current.cpu_s_per_1k, other.cpu_s_per_1k)} "
            f"| {_num(current.p50_ms, 1)} | {_num(other.p50_ms, 1)} |"
        )
    return [*lines, ""]


def _ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"{value / base:.2f}x"


def _find(table: Sequence[Row], path: str) -> Row | None:
    return next((row for row in table if row.path == path), None)


def _ratios(table: Sequence[Row]) -> list[str]:
    worker, backlog = _find(table, "worker"), _find(table, "worker-backlog")
    bases = [_find(table, name) for name, _ in RATIO_TARGETS]
    if (worker is None and backlog is None) or not any(b is not None and b.rate for b in bases):
        return []
    lines = [
        "Worker throughput ÷ baseline, same run (target met when ratio ≥ target):",
        "",
        "| baseline | baseline events/s | target | worker end-to-end | met | "
        "worker first→last receipt | met | worker-backlog drain | met |",
        "|---|---:|---:|---:|---|---:|---|---:|---|",
    ]
    for name, target in RATIO_TARGETS:
        base = _find(table, name)
        if base is None or not base.rate:
            continue
        cells = []
        for rate in (
            worker.e2e_rate if worker else None,
            worker.rate if worker else None,
            backlog.rate if backlog else None,
        ):
            if rate is None:
                cells += ["—", "—"]
            else:
                ratio = rate / base.rate
                cells += [f"{ratio:.2f}x", "met" if ratio >= target else "not met"]
        row = f"| {name} | {_num(base.rate)} | ≥ {target:g}x | " + " | ".join(cells)
        lines.append(row + " |")
    return [*lines, ""]


def _targets(table: Sequence[Row]) -> list[str]:
    lines = []
    latency = _find(table, "latency")
    if latency is not None and latency.p99_ms is not None and latency.p50_ms is not None:
        p50_ok = latency.p50_ms < P50_TARGET_MS
        p99_ok = latency.p99_ms < P99_TARGET_MS
        lines.append(
            f"Latency at {_num(latency.rate)} events/s: p50 {latency.p50_ms:.1f} ms "
            f"(target < {P50_TARGET_MS:g} ms: {'met' if p50_ok else 'not met'}), "
            f"p99 {latency.p99_ms:.1f} ms "
            f"(target < {P99_TARGET_MS:g} ms: {'met' if p99_ok else 'not met'})."
        )
    peaks = [row.peak_rss_mb for row in table if row.peak_rss_mb is not None]
    if peaks:
        peak = max(peaks)
        verdict = "met" if peak < RSS_TARGET_MB else "not met"
        lines.append(
            f"Worker peak RSS over all runs: {peak:.1f} MB "
            f"(target < {RSS_TARGET_MB:g} MB: {verdict})."
        )
    return [*lines, ""] if lines else []


def _mongo(table: Sequence[Row]) -> list[str]:
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


def _cpu_budget(table: Sequence[Row]) -> list[str]:
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
        cells = [row.path, *(_num(cpu.get(name), 2) for name, _ in PROCESS_COLUMNS)]
        cells += [f"{total:.2f}", _num(ceiling)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The machine ceiling, {cores} cores x 1,000 / total, is the rate at which these "
        "processes together would need every core, and an estimate: the CPU spent per event by "
        "everything that runs on this box, not counting the kernel's softirq time or other "
        "processes.",
    ]
    return [*lines, ""]
