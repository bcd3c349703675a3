"""The benchmark runs end to end on a small stream and loses or duplicates nothing.

Correctness only: no assertion here is about speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def _table(report: str) -> list[dict[str, str]]:
    """The rows of the report's first Markdown table, keyed by column header."""
    lines = [line for line in report.splitlines() if line.startswith("| path |")]
    assert lines, f"no results table in:\n{report}"
    start = report.splitlines().index(lines[0])
    body = report.splitlines()[start:]
    header = [cell.strip() for cell in body[0].strip("|").split("|")]
    rows = []
    for line in body[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


@pytest.fixture(scope="module")
def small_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``python -m bench --events 200`` run without aio-pika-bare and latency, shared."""
    out = tmp_path_factory.mktemp("bench") / "report.md"
    argv = [sys.executable, "-m", "bench", "--events", "200", "--skip", "aio-pika-bare"]
    done = subprocess.run(
        [*argv, "--no-latency", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done, out


def test_bench_small_run_delivers_every_event_once(
    small_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """`python -m bench --events 200` exits 0 with lost=0 and duplicated=0 on every path."""
    done, out = small_run

    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table(done.stdout)
    assert {row["path"] for row in rows} == {
        "sync-trigger",
        "direct-32",
        "node-direct",
        "worker",
        "worker-backlog",
    }
    assert [(row["path"], row["lost"], row["duplicated"]) for row in rows] == [
        (row["path"], "0", "0") for row in rows
    ]
    assert _table(out.read_text(encoding="utf-8")) == rows


def test_bench_reports_node_direct_cpu_and_the_workers_mongodb_work(
    small_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """node-direct gets its Node process's CPU per event; worker rows get the CPU ratio to it
    and MongoDB documents and round trips per event."""
    done, _ = small_run

    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["path"]: row for row in _table(done.stdout)}
    node_cpu = float(rows["node-direct"]["node-direct CPU s/1k events"])
    assert node_cpu > 0
    for path in ("worker", "worker-backlog"):
        worker = rows[path]
        cpu = float(worker["worker CPU s/1k events"])
        # the table divides unrounded medians; its cells are rounded to 0.01
        ratio = float(worker["worker ÷ node-direct CPU"].removesuffix("x"))
        assert ratio == pytest.approx(cpu / node_cpu, rel=0.05)
        assert float(worker["MongoDB docs/event"]) > 0
        assert float(worker["MongoDB round trips/event"]) > 0
