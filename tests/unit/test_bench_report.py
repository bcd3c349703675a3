"""The benchmark report: paired before/after rows and the machine's CPU budget."""

from __future__ import annotations

import os

from bench import report
from bench.paths import Result


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
    text = report.render(["# test"], report.rows(results))
    line = next(x for x in text.splitlines() if x.startswith("| worker vs worker @abc123"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:7] == ["1,100", "800", "1.38x", "0.80", "1.00", "0.80x"]


def test_the_cpu_budget_adds_up_and_gives_the_machine_ceiling() -> None:
    """Each process's CPU per 1,000 events, their total, and cores x 1,000 / total."""
    text = report.render(["# test"], report.rows([_worker("worker", 1000.0, 1.5)]))
    line = next(x for x in text.splitlines() if x.startswith("| worker | 1.50"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    total = 1.5 + 0.2 + 0.3
    assert float(cells[-2]) == total
    assert cells[-1].replace(",", "") == str(round((os.cpu_count() or 1) * 1000 / total))
