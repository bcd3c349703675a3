"""The worker as a subprocess: ``python -m worker run`` with its own exchange and queue.

It runs from the work tree or from ``git archive REF`` (:func:`bench.stack.worker_source`),
is ready when ``/readyz`` answers, and is read from the outside: CPU time and memory from
``/proc`` (:mod:`bench.usage`), counters from ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
from pathlib import Path

import aio_pika
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import PAYLOAD_LIMIT_KB, Services
from bench.usage import Usage, usage_of
from devtools.processes import ManagedProcess, free_port, http_ok, wait_until
from worker.broker.connections import connect
from worker.broker.topology import Topology
from worker.config import Settings

RETRY_DELAYS_S = "5,30"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # SIGTERM drains in-flight work; SIGKILL after this long
LOG_TAIL_LINES = 30


class WorkerProcess:
    """``python -m worker run`` in its own process group, with its own exchange and queue."""

    def __init__(
        self,
        services: Services,
        *,
        name: str,
        database: str,
        source: Path,
        prefetch: int,
        log_level: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.database = database
        self._services = services
        self.topology = Topology(
            exchange=f"bench.{name}.events",
            queue=f"bench.{name}.fanout",
            retry_delays_s=tuple(float(s) for s in RETRY_DELAYS_S.split(",")),
        )
        self.http_port = free_port()
        self.log_path = services.workdir / f"worker-{name}.log"
        env = _worker_env(services, self.topology, database, source)
        env.update(HTTP_PORT=str(self.http_port), PREFETCH_COUNT=str(prefetch), LOG_LEVEL=log_level)
        env.update(extra_env or {})
        self.process = ManagedProcess(
            [sys.executable, "-m", "worker", "run"], env=env, cwd=source, log_path=self.log_path
        )

    @property
    def pid(self) -> int:
        """The worker's process id."""
        pid = self.process.pid
        if pid is None:
            raise RuntimeError("not running")
        return pid

    def start(self) -> None:
        """Start the worker and wait until ``/readyz`` answers 200."""
        self.process.start()
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.http_port}/readyz"),
            self.process,
            what=f"worker {self.name}",
            timeout_s=READY_TIMEOUT_S,
        )

    def stop(self) -> int | None:
        """SIGTERM (the worker drains), then SIGKILL the group; return the exit code."""
        return self.process.stop(grace_s=STOP_TIMEOUT_S)

    def usage(self) -> Usage:
        """CPU seconds so far, current and peak resident memory, from ``/proc``; and the
        other processes' CPU seconds (:func:`bench.usage.process_cpu`)."""
        return usage_of(self.pid, self._services)

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, summed over labels, plus ``name{label=value}`` keys."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
                if "operation" in sample.labels:
                    key = f"{sample.name}{{operation={sample.labels['operation']}}}"
                    samples[key] = samples.get(key, 0.0) + sample.value
        return samples

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the worker's output."""
        return self.process.log_tail(lines)

    async def delete_topology(self, rabbitmq_url: str) -> None:
        """Delete this worker's queues and exchanges (after it stopped)."""
        topology = self.topology
        queues = [topology.queue, topology.dlq]
        queues += [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        exchanges = [topology.exchange, topology.dead_exchange, topology.return_exchange]
        exchanges += [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        connection = await connect(rabbitmq_url, purpose="bench cleanup")
        async with connection:
            for name in queues:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)
            for name in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(name)


def _worker_env(
    services: Services, topology: Topology, database: str, source: Path
) -> dict[str, str]:
    """The environment of a bench worker: ours minus every worker setting, then the bench's."""
    env = {k: v for k, v in os.environ.items() if not _is_worker_setting(k)}
    env.update(
        RABBITMQ_URL=services.rabbitmq_url,
        EVENTS_EXCHANGE=topology.exchange,
        WORKER_QUEUE=topology.queue,
        RETRY_DELAYS_S=RETRY_DELAYS_S,
        MONGODB_URL=services.mongodb_url,
        # The stand-in purges TTL collections on every query; real MongoDB does not.
        MONGODB_TTL_INDEXES="false" if services.standin is not None else "true",
        MONGODB_DB=database,
        SOKETI_APP_ID=services.soketi.app_id,
        SOKETI_APP_KEY=services.soketi.key,
        SOKETI_APP_SECRET=services.soketi.secret,
        SOKETI_HOST=services.soketi.host,
        SOKETI_PORT=str(services.soketi.port),
        MAX_PAYLOAD_KB=str(PAYLOAD_LIMIT_KB),
        HTTP_HOST="127.0.0.1",
        LOG_FORMAT="json",
        # stats-update would mix into what the benchmark counts on private-admin.
        STATS_INTERVAL_S="0",
        PRESENCE_RECONCILE_S="0",
        PYTHONPATH=str(source),
    )
    return env


def _is_worker_setting(name: str) -> bool:
    """Whether an inherited variable would configure the worker (they are all set here)."""
    return name.upper() in {field.upper() for field in Settings.model_fields} or name in {
        "PYTHONPATH"
    }
