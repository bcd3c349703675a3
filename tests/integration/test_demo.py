"""``make demo`` works: the demo starts its stack, streams, shows deliveries and exits cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.demo import RETRY_DELAYS_S
from devtools.marketplace import WATCHED_CUSTOMER, WATCHED_SHOP, conversation_id
from tests.conftest import Names

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DURATION_S, RATE = 8, 10
DEADLINE_S = 90.0  # start-up (Soketi, stand-in, worker) + DURATION_S + the tail, with room
INTERRUPT_GRACE_S = 20.0
EVENT_LINE = re.compile(r"^\d\d:\d\d:\d\d  (\S+)\s+(\S+)\s")


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m devtools demo`` to completion; past the deadline, Ctrl-C it and fail."""
    argv = [sys.executable, "-m", "devtools", "demo", "--duration", str(DURATION_S)]
    with subprocess.Popen(
        [*argv, "--rate", str(RATE)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        try:
            stdout, stderr = demo.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            # SIGINT, as Ctrl-C would: the demo then stops the Soketi and stand-in it started.
            demo.send_signal(signal.SIGINT)
            try:
                stdout, stderr = demo.communicate(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                demo.kill()
                stdout, stderr = demo.communicate()
            pytest.fail(
                f"the demo ran past {DEADLINE_S:.0f} s:\n{stdout[-3000:]}\n{stderr[-3000:]}"
            )
    return subprocess.CompletedProcess(argv, demo.returncode, stdout, stderr)


def _demo_env(rabbitmq_url: str, names: Names) -> dict[str, str]:
    """Our environment, with the test's own exchange, queue and database and a free HTTP port."""
    return {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "EVENTS_EXCHANGE": names.exchange,
        "WORKER_QUEUE": names.queue,
        "MONGODB_DB": names.db,
        "HTTP_PORT": "0",
    }


def test_demo_streams_to_watched_channels_and_exits_zero(
    rabbitmq_url: str, mongo_url: str, names: Names
) -> None:
    """`python -m devtools demo --duration 8 --rate 10` shows the console URL and deliveries."""
    names.retry_delays_s = RETRY_DELAYS_S  # so cleanup deletes the demo worker's retry tiers

    done = _run_demo(_demo_env(rabbitmq_url, names))

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    chat = conversation_id(WATCHED_CUSTOMER, WATCHED_SHOP)
    console = [line for line in lines if line.startswith("Console ")]
    assert len(console) == 1, done.stdout
    assert re.fullmatch(
        rf"Console +http://127\.0\.0\.1:\d+/console#admin=[\w.-]+&seller=[\w.-]+"
        rf"&customer=[\w.-]+&chat={re.escape(chat)}",
        console[0],
    ), console[0]
    watching = next(line for line in lines if line.startswith("Watching "))
    watched = set(watching.split(maxsplit=1)[1].split(", "))
    assert watched == {
        "private-admin",
        f"private-seller-{WATCHED_SHOP}",
        f"private-user-{WATCHED_CUSTOMER}",
        f"private-chat-{chat}",
        "public",
    }
    shown = [m.groups() for line in lines if (m := EVENT_LINE.match(line))]
    totals = [int(m[1]) for line in lines if (m := re.fullmatch(r"(\d+) events received.*", line))]
    assert len(totals) == 1, done.stdout
    assert {channel for channel, _ in shown} <= watched
    assert ("private-admin", "new-order") in shown  # the stream opens with an order
    assert 0 < len(shown) <= totals[0]
