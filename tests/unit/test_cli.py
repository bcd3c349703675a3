"""The command line as an operator meets it: exit codes, one-line config errors, schema export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import EVENT_TYPES

ROOT = Path(__file__).parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SOKETI_", "RABBITMQ_"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_missing_secret_exits_2_with_one_line() -> None:
    """Without SOKETI_APP_SECRET, `run` exits 2 naming the variable, with no traceback."""
    done = _run("run", env={"SOKETI_APP_ID": "1", "SOKETI_APP_KEY": "k"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bazaar-fanout: configuration error: SOKETI_APP_SECRET is required but not set"
    ]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SOKETI_APP_ID": "abc"}, "SOKETI_APP_ID"),
        ({"SOKETI_PORT": "70000"}, "SOKETI_PORT"),
        ({"PREFETCH_COUNT": "0"}, "PREFETCH_COUNT"),
        ({"RETRY_DELAYS_S": "5,-1"}, "RETRY_DELAYS_S"),
    ],
)
def test_invalid_value_names_the_variable_and_hides_the_secret(
    env: dict[str, str], variable: str
) -> None:
    """An invalid value exits 2 with one line naming it; the secret's value never appears."""
    secret = "s3cr3t-value-that-must-not-leak"
    full = {"SOKETI_APP_ID": "1", "SOKETI_APP_KEY": "k", "SOKETI_APP_SECRET": secret, **env}
    done = _run("check", env=full)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"bazaar-fanout: configuration error: {variable} is invalid")
    assert secret not in done.stderr + done.stdout


def test_no_command_is_a_usage_error() -> None:
    """Without a command the CLI prints help and exits 2."""
    assert _run().returncode == 2


def test_schemas_writes_every_event_type_and_asyncapi(tmp_path: Path) -> None:
    """`schemas --out DIR` writes one JSON Schema per catalogue type and an AsyncAPI document."""
    done = _run("schemas", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {f"{t}.schema.json" for t in EVENT_TYPES} | {"asyncapi.json"}
    order = json.loads((tmp_path / "order.created.schema.json").read_text())
    assert "occurredAt" in order["properties"]
    document = json.loads((tmp_path / "asyncapi.json").read_text())
    assert set(document["channels"]) == set(EVENT_TYPES)


def test_publish_refuses_an_invalid_event_before_sending() -> None:
    """`publish` validates first: an order without items exits 2 and says why."""
    done = _run(
        "publish",
        "--type",
        "order.created",
        "--data",
        '{"orderId": "o1"}',
        env={"RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )
    assert done.returncode == 2
    assert "invalid_event" in done.stderr
