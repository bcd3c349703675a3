"""Soketi's Prometheus endpoint answers, and every ``soketi_*`` name deploy/ uses exists there.

Soketi 1.6.1 runs with its metrics server on (``start_soketi(metrics=True)``, a free port);
after a connection, a subscription, a trigger and a disconnect every counter has a series.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pusher
import pytest
import yaml

from devtools.devstack import SoketiServer, start_soketi
from devtools.watch import PusherSubscriber
from tests.test_deploy import SOKETI_SERIES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "bazaar-fanout.json"
SOKETI_METRIC_NAME = re.compile(r"\bsoketi_[a-z_]+\b")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')
WAIT_S = 10.0


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode("utf-8")


def _samples(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, exactly as written in the exposition text.

    Not prometheus_client's parser: it renames counters to ``*_total``, but Prometheus
    stores Soketi's byte counters under their raw names (``soketi_socket_received_bytes``).
    """
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        samples.setdefault(match.group(1), set()).update(LABEL.findall(match.group(2) or ""))
    return samples


def _deploy_exprs() -> list[str]:
    """Every PromQL expression of the alert rules and the dashboard's panels."""
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [
        nested for panel in dashboard["panels"] for nested in [panel, *panel.get("panels", [])]
    ]
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]] + [
        target["expr"] for panel in panels for target in panel.get("targets", [])
    ]


@pytest.fixture(scope="module")
async def exposed() -> AsyncIterator[dict[str, set[str]]]:
    """Sample name -> label names on Soketi's /metrics after one client's whole life."""
    server: SoketiServer = await asyncio.to_thread(
        start_soketi, "4251", "metrics-key", "metrics-secret", metrics=True
    )
    try:
        async with PusherSubscriber() as subscriber:
            await subscriber.connect(server.host, server.port, server.key)
            await subscriber.subscribe("metrics-channel")
            client = pusher.Pusher(
                app_id=server.app_id,
                key=server.key,
                secret=server.secret,
                host=server.host,
                port=server.port,
                ssl=False,
            )
            await asyncio.to_thread(client.trigger, "metrics-channel", "ping", {"n": 1})
            await subscriber.wait_for(lambda got: any(r.event == "ping" for r in got), WAIT_S)
        # The disconnect is counted once Soketi has seen the socket close.
        samples: dict[str, set[str]] = {}
        for _ in range(50):
            status, text = await asyncio.to_thread(_get, server.metrics_url)
            assert status == 200
            samples = _samples(text)
            if "soketi_new_disconnections_total" in samples:
                break
            await asyncio.sleep(0.1)
        yield samples
    finally:
        await asyncio.to_thread(server.stop)


def test_metrics_endpoint_answers_with_soketi_metrics(exposed: dict[str, set[str]]) -> None:
    """/metrics answers 200 with Soketi's own families, labelled by app and port."""
    assert "soketi_connected" in exposed
    assert exposed["soketi_http_calls_received_total"] >= {"app_id", "port"}


def test_every_soketi_name_in_deploy_is_exposed(exposed: dict[str, set[str]]) -> None:
    """Each ``soketi_*`` name the alert rules and the dashboard query exists in the output."""
    referenced = {name for expr in _deploy_exprs() for name in SOKETI_METRIC_NAME.findall(expr)}
    assert {"soketi_connected", "soketi_http_calls_received_total"} <= referenced
    assert referenced - set(exposed) == set()


def test_catalogue_in_test_deploy_matches_soketi(exposed: dict[str, set[str]]) -> None:
    """tests/test_deploy.py's SOKETI_SERIES names and labels are what Soketi exposes."""
    missing = {name for name in SOKETI_SERIES if name not in exposed}
    assert missing == set()
    for name, labels in SOKETI_SERIES.items():
        assert set(labels) <= exposed[name], name
