"""The benchmark report: paired before/after rows and the machine's CPU budget."""

from __future__ import annotations

import os

from bench import report, rows
from bench.paths import MongoShare, Result, record_mongo


def _worker(path: str, e2e_rate: float, cpu: float) -> Result:
    result = Result(path, 1000, rate=e2e_rate, e2e_rate=e2e_rate, cpu_s_per_1k=cpu)
    result.process_cpu_s_per_1k = {"worker": cpu, "soketi": 0.2, "rabbitmq": 0.3}
    return result


def test_a_baseline_worker_gets_a_paired_row_with_its_ratios() -> None:
    """``worker`` and ``worker @REF`` are compared: events/s and CPU ratios of the medians."""
    results = [
        _worker("worker", 1000.0, 0.8),
        _worker(f"worker{report.baseline_suffix('abc123')}", 800.0, 1.0),
        _worker("worker", 1200.0, 0.8),
        _worker(f"worker{report.baseline_suffix('abc123')}", 800.0, 1.0),
    ]
    text = report.render(["# test"], rows.rows(results))
    line = next(x for x in text.splitlines() if x.startswith("| worker vs worker @abc123"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:7] == ["1,100", "800", "1.38x", "0.80", "1.00", "0.80x"]


def test_the_cpu_budget_adds_up_and_gives_the_machine_ceiling() -> None:
    """Each process's CPU per 1,000 events, their total, and cores x 1,000 / total."""
    text = report.render(["# test"], rows.rows([_worker("worker", 1000.0, 1.5)]))
    line = next(x for x in text.splitlines() if x.startswith("| worker | 1.50"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    total = 1.5 + 0.2 + 0.3
    assert float(cells[-2]) == total
    assert cells[-1].replace(",", "") == str(round((os.cpu_count() or 1) * 1000 / total))


def _node_direct(rate: float, cpu: float) -> Result:
    return Result("node-direct", 1000, rate=rate, node_cpu_s_per_1k=cpu)


def _cells(text: str, start: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_worker_rows_get_their_cpu_ratio_to_node_direct() -> None:
    """The table puts node-direct's CPU next to the worker's and worker ÷ node-direct in
    each worker row; a section repeats it with the throughput ratio."""
    results = [_node_direct(2000.0, 0.5), _worker("worker", 1000.0, 1.5)]
    text = report.render(["# test"], rows.rows(results))
    header = _cells(text, "| path | events")
    node = dict(zip(header, _cells(text, "| node-direct | 1,000"), strict=True))
    worker = dict(zip(header, _cells(text, "| worker | 1,000"), strict=True))
    assert node["node-direct CPU s/1k events"] == "0.50"
    assert node["worker CPU s/1k events"] == "—"
    assert worker["worker CPU s/1k events"] == "1.50"
    assert worker["worker ÷ node-direct CPU"] == "3.00x"
    assert _cells(text, "| worker | 3.00x") == ["worker", "3.00x", "0.50x"]


def test_without_node_direct_the_ratio_is_a_dash() -> None:
    """No node-direct row, no ratio: the worker's cell shows — and there is no section."""
    text = report.render(["# test"], rows.rows([_worker("worker", 1000.0, 1.5)]))
    header = _cells(text, "| path | events")
    worker = dict(zip(header, _cells(text, "| worker | 1,000"), strict=True))
    assert worker["worker ÷ node-direct CPU"] == "—"
    assert "Worker ÷ node-direct" not in text


def test_mongodb_documents_and_round_trips_per_event() -> None:
    """Documents left in fanout_* and query counts over all operations, each ÷ events,
    medians over runs; the documents by collection get a table of their own."""
    results = []
    for processed, history, checks in ((1000, 2000, 300), (1000, 3000, 500), (1000, 4000, 700)):
        result = _worker("worker", 1000.0, 1.0)
        share = MongoShare(1.0, 0.5, 0.2, 1000, {"dedup check": (checks, 0.1), "find": (100, 0.1)})
        record_mongo(result, share, {"fanout_history": history, "fanout_processed": processed})
        results.append(result)
    text = report.render(["# test"], rows.rows(results))
    header = _cells(text, "| path | events")
    worker = dict(zip(header, _cells(text, "| worker | 1,000"), strict=True))
    assert worker["MongoDB docs/event"] == "4.00"
    assert worker["MongoDB round trips/event"] == "0.60"
    assert _cells(text, "| path | fanout_history") == [
        "path",
        "fanout_history",
        "fanout_processed",
        "total",
    ]
    assert _cells(text, "| worker | 3.00") == ["worker", "3.00", "1.00", "4.00"]
