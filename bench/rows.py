"""The report's rows: each path's results over the runs, reduced to medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.paths import MongoShare, Result

NODE_DIRECT = "node-direct"


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
    node_cpu_s_per_1k: float | None
    peak_rss_mb: float | None
    process_cpu_s_per_1k: dict[str, float]  # medians over the runs that measured each
    mongo_documents: dict[str, float]  # fanout_* collection -> documents, median of runs
    mongo_documents_per_event: float | None
    mongo_round_trips_per_event: float | None
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


def find(table: Sequence[Row], path: str) -> Row | None:
    """The row of ``path``, if it ran."""
    return next((row for row in table if row.path == path), None)


def num(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals, or — when missing."""
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    """``value / base`` as ``1.23x``, or — when either is missing."""
    return "—" if value is None or not base else f"{value / base:.2f}x"


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
        node_cpu_s_per_1k=med(lambda r: r.node_cpu_s_per_1k),
        peak_rss_mb=max((r.peak_rss_mb for r in group if r.peak_rss_mb), default=None),
        process_cpu_s_per_1k=_medians([r.process_cpu_s_per_1k for r in group]),
        mongo_documents=_medians([r.mongo_documents for r in group]),
        mongo_documents_per_event=med(lambda r: r.mongo_documents_per_event),
        mongo_round_trips_per_event=med(lambda r: r.mongo_round_trips_per_event),
        lost=sum(r.lost for r in group),
        duplicated=sum(r.duplicated for r in group),
        runs=len(group),
        note=group[0].note + (" (first run)" if len(group) > 1 and group[0].note else ""),
        mongo=[r.mongo for r in group if r.mongo is not None],
    )


def _medians(measured: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each key's median over the runs that measured it."""
    names = dict.fromkeys(name for values in measured for name in values)
    return {
        name: statistics.median([values[name] for values in measured if name in values])
        for name in names
    }
