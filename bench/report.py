"""Turn the runs' rows into the Markdown report: table, ratios, targets, costs.

The rows come from :func:`bench.rows.rows`; the cost sections from :mod:`bench.report_costs`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import report_costs
from bench.rows import NODE_DIRECT, Row, find, num, ratio

# The targets: worker throughput / baseline, and latency at a steady 500 events/s.
RATIO_TARGETS = (("sync-trigger", 5.0), ("direct-32", 2.0), ("aio-pika-bare", 0.5))
P50_TARGET_MS = 10.0
P99_TARGET_MS = 50.0
RSS_TARGET_MB = 150.0


def baseline_suffix(ref: str) -> str:
    """What a path measured with the ``--baseline-ref`` worker is called: ``worker @REF``."""
    return f" @{ref}"


def render(header: Sequence[str], table: Sequence[Row]) -> str:
    """The whole report as Markdown."""
    lines = [*header, "", *_table(table), ""]
    lines += _paired(table)
    lines += _ratios(table)
    lines += _targets(table)
    lines += _node_direct(table)
    lines += report_costs.mongo(table)
    lines += report_costs.cpu_budget(table)
    return "\n".join(lines) + "\n"


def _table(table: Sequence[Row]) -> list[str]:
    node = find(table, NODE_DIRECT)
    node_cpu = node.node_cpu_s_per_1k if node is not None else None
    lines = [
        "| path | events | events/s | e2e events/s | p50 ms | p95 ms | p99 ms "
        "| worker CPU s/1k events | node-direct CPU s/1k events | worker ÷ node-direct CPU "
        "| worker peak RSS MB | MongoDB docs/event | MongoDB round trips/event "
        "| lost | duplicated | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in table:
        lines.append(
            f"| {row.path} | {row.events:,} | {num(row.rate)} | {num(row.e2e_rate)} "
            f"| {num(row.p50_ms, 1)} | {num(row.p95_ms, 1)} | {num(row.p99_ms, 1)} "
            f"| {num(row.cpu_s_per_1k, 2)} | {num(row.node_cpu_s_per_1k, 2)} "
            f"| {ratio(row.cpu_s_per_1k, node_cpu)} | {num(row.peak_rss_mb, 1)} "
            f"| {num(row.mongo_documents_per_event, 2)} "
            f"| {num(row.mongo_round_trips_per_event, 2)} "
            f"| {row.lost} | {row.duplicated} | {row.note} |"
        )
    return lines


def _paired(table: Sequence[Row]) -> list[str]:
    """This worker against the ``--baseline-ref`` worker, path by path, same runs."""
    pairs = [
        (current, row)
        for row in table
        if " @" in row.path and (current := find(table, row.path.split(" @")[0])) is not None
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
            f"| {current.path} vs {other.path} | {num(rate)} | {num(base_rate)} "
            f"| {ratio(rate, base_rate)} | {num(current.cpu_s_per_1k, 2)} "
            f"| {num(other.cpu_s_per_1k, 2)} "
            f"| {ratio(current.cpu_s_per_1k, other.cpu_s_per_1k)} "
            f"| {num(current.p50_ms, 1)} | {num(other.p50_ms, 1)} |"
        )
    return [*lines, ""]


def _ratios(table: Sequence[Row]) -> list[str]:
    worker, backlog = find(table, "worker"), find(table, "worker-backlog")
    bases = [find(table, name) for name, _ in RATIO_TARGETS]
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
        base = find(table, name)
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
        row = f"| {name} | {num(base.rate)} | ≥ {target:g}x | " + " | ".join(cells)
        lines.append(row + " |")
    return [*lines, ""]


def _targets(table: Sequence[Row]) -> list[str]:
    lines = []
    latency = find(table, "latency")
    if latency is not None and latency.p99_ms is not None and latency.p50_ms is not None:
        p50_ok = latency.p50_ms < P50_TARGET_MS
        p99_ok = latency.p99_ms < P99_TARGET_MS
        lines.append(
            f"Latency at {num(latency.rate)} events/s: p50 {latency.p50_ms:.1f} ms "
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


def _node_direct(table: Sequence[Row]) -> list[str]:
    """Each worker path against the seed's way in Node: CPU per event and throughput."""
    node = find(table, NODE_DIRECT)
    workers = [row for row in table if row.cpu_s_per_1k is not None]
    if node is None or node.node_cpu_s_per_1k is None or not workers:
        return []
    lines = [
        f"Worker ÷ node-direct (pusher in Node, {num(node.rate)} events/s, "
        f"{node.node_cpu_s_per_1k:.2f} s CPU per 1,000 events); CPU below 1x means the worker "
        "spends less of its own CPU per event than the seed's Node process did:",
        "",
        "| path | worker CPU ÷ node-direct CPU | worker events/s ÷ node-direct events/s |",
        "|---|---:|---:|",
    ]
    for row in workers:
        # the latency run's rate is the offered one, not a throughput
        rate = None if row.path.startswith("latency") else row.e2e_rate or row.rate
        lines.append(
            f"| {row.path} | {ratio(row.cpu_s_per_1k, node.node_cpu_s_per_1k)} "
            f"| {ratio(rate, node.rate)} |"
        )
    return [*lines, ""]
