"""`python -m worker check`: one verdict per service, and an exit code a script can use."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.devstack import SoketiServer
from devtools.processes import free_port


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SOKETI_", "MONGODB_"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", "check"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        check=False,
    )


def _env(rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, **changes: str) -> dict[str, str]:
    return {
        "RABBITMQ_URL": rabbitmq_url,
        "MONGODB_URL": mongo_url,
        "SOKETI_APP_ID": soketi.app_id,
        "SOKETI_APP_KEY": soketi.key,
        "SOKETI_APP_SECRET": soketi.secret,
        "SOKETI_HOST": soketi.host,
        "SOKETI_PORT": str(soketi.port),
        **changes,
    }


def _lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {line.split()[0]: line.split(None, 1)[1] for line in done.stdout.splitlines()}


def test_all_services_ok(rabbitmq_url: str, mongo_url: str, soketi: SoketiServer) -> None:
    """With every service up, check prints ok three times and exits 0."""
    done = _check(_env(rabbitmq_url, mongo_url, soketi))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _lines(done) == {"RabbitMQ": "ok", "MongoDB": "ok", "Soketi": "ok"}


def test_each_unreachable_service_gets_a_clear_line(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer
) -> None:
    """Unreachable RabbitMQ, MongoDB and Soketi each fail with a reason; exit code 1; no secret."""
    dead = free_port()
    done = _check(
        _env(
            rabbitmq_url,
            mongo_url,
            soketi,
            RABBITMQ_URL=f"amqp://guest:hunter2pass@127.0.0.1:{dead}/",
            MONGODB_URL=f"mongodb://127.0.0.1:{dead}",
            SOKETI_PORT=str(dead),
        )
    )
    assert done.returncode == 1
    lines = _lines(done)
    assert set(lines) == {"RabbitMQ", "MongoDB", "Soketi"}
    assert all(line.startswith("FAIL: ") for line in lines.values())
    assert "unreachable" in lines["Soketi"] or "refused" in lines["Soketi"].lower()
    assert "hunter2pass" not in done.stdout + done.stderr
    assert soketi.secret not in done.stdout + done.stderr


def test_wrong_soketi_secret_is_named(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer
) -> None:
    """A wrong secret is reported as rejected credentials, not as an outage."""
    done = _check(_env(rabbitmq_url, mongo_url, soketi, SOKETI_APP_SECRET="wrong-secret"))
    assert done.returncode == 1
    lines = _lines(done)
    assert lines["RabbitMQ"] == "ok" and lines["MongoDB"] == "ok"
    assert "401" in lines["Soketi"] and "SOKETI_APP_ID/KEY/SECRET" in lines["Soketi"]
