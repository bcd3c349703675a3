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


def test_bench_small_run_delivers_every_event_once(tmp_path: Path) -> None:
    """`python -m bench --events 200` exits 0 with lost=0 and duplicated=0 on every path."""
    out = tmp_path / "report.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--events",
            "200",
            "--skip",
            "aio-pika-bare",
            "--no-latency",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table(done.stdout)
    assert {row["path"] for row in rows} == {
        "sync-trigger",
        "direct-32",
        "worker",
        "worker-backlog",
    }
    assert [(row["path"], row["lost"], row["duplicated"]) for row in rows] == [
        (row["path"], "0", "0") for row in rows
    ]
    assert _table(out.read_text(encoding="utf-8")) == rows
