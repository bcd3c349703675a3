"""The services one benchmark run uses, all on loopback, and the worker as a subprocess.

RabbitMQ is the shared local broker (started if down, never stopped); Soketi and the
MongoDB stand-in (unless ``MONGODB_URL`` is set) are started here and stopped at the end.
:class:`WorkerProcess` runs ``python -m worker run`` with its own exchange and queue and
reads its CPU time and peak RSS from ``/proc`` and its counters from ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from bench.receipts import Endpoint
from devtools import devstack
from devtools.demo import _seed
from worker.broker.topology import Topology
from worker.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SOKETI_APP_ID = "7007"
PAYLOAD_LIMIT_KB = 1024  # generous: the benchmark measures speed, not Soketi's size limit
RETRY_DELAYS_S = "5,30"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Services:
    """Loopback Soketi, MongoDB (stand-in or ``MONGODB_URL``) and RabbitMQ for one bench run."""

    rabbitmq_url: str
    mongodb_url: str
    db_prefix: str
    soketi: devstack.SoketiServer
    standin: devstack.MongoStandin | None
    workdir: Path
    databases: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        """Where subscribers connect."""
        return Endpoint(self.soketi.host, self.soketi.port, self.soketi.key, self.soketi.secret)

    @property
    def mongo_kind(self) -> str:
        """``nx-27017 stand-in`` or ``MONGODB_URL``."""
        return "nx-27017 stand-in" if self.standin is not None else "MONGODB_URL"

    def stop(self) -> None:
        """Stop what was started here (Soketi, the stand-in); RabbitMQ is shared and stays."""
        self.soketi.stop()
        if self.standin is not None:
            self.standin.stop()


def start_services(workdir: Path) -> Services:
    """Start Soketi and MongoDB on loopback, make sure RabbitMQ runs, seed the demo's data."""
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    parts = urlsplit(rabbitmq_url)
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"bench: RABBITMQ_URL must point at loopback, not {parts.hostname}")
    devstack.ensure_rabbitmq(parts.hostname or "127.0.0.1", parts.port or 5672)
    soketi = devstack.start_soketi(
        SOKETI_APP_ID,
        key=f"bench-{secrets.token_hex(6)}",
        secret=secrets.token_hex(24),
        max_payload_kb=PAYLOAD_LIMIT_KB,
        log_path=workdir / "soketi.log",
    )
    standin = None
    try:
        mongo_url = os.environ.get("MONGODB_URL")
        if mongo_url is None:
            standin = devstack.start_mongo_standin()
            mongo_url = standin.url
        services = Services(
            rabbitmq_url,
            mongo_url,
            f"bench_{uuid.uuid4().hex[:8]}",
            soketi,
            standin,
            workdir,
        )
        return services
    except BaseException:
        soketi.stop()
        if standin is not None:
            standin.stop()
        raise


async def fresh_database(services: Services) -> str:
    """A new database seeded with the demo's shops, customers and products (as ``make demo``).

    One per worker run: the duplicate-check collection starts empty every time, so runs
    compare (the stand-in's inserts and lookups slow down as a collection grows).
    """
    name = f"{services.db_prefix}_{len(services.databases) + 1}"
    services.databases.append(name)
    await _seed(_settings(services, name))
    return name


async def drop_databases(services: Services) -> None:
    """Drop the benchmark's databases (matters on a real MongoDB; the stand-in just exits)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        services.mongodb_url, serverSelectionTimeoutMS=3000
    )
    try:
        for name in services.databases:
            await client.drop_database(name)
    finally:
        await client.close()


def _settings(services: Services, database: str) -> Settings:
    return Settings(
        mongodb_url=services.mongodb_url,
        mongodb_db=database,
        soketi_app_id=services.soketi.app_id,
        soketi_app_key=services.soketi.key,
        soketi_app_secret=services.soketi.secret,
    )


def worker_source(ref: str | None, workdir: Path) -> Path:
    """The directory the worker runs from: the work tree, or ``git archive REF`` of it."""
    if ref is None:
        return REPO_ROOT
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref, "worker", "handlers", "schemas"],
        check=True,
        capture_output=True,
    ).stdout
    target = workdir / f"worker-{ref.replace('/', '_')}"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


# The processes whose CPU a run's budget counts: the worker, and the others whose CPU
# ``Usage.processes`` holds.
WORKER, STANDIN, SOKETI, RABBITMQ, BENCH = "worker", "standin", "soketi", "rabbitmq", "bench"


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and memory of the worker at one moment, and the CPU
    seconds of the other processes of the run then (name -> pid -> seconds)."""

    cpu_s: float
    rss_kb: int
    hwm_kb: int
    processes: dict[str, dict[int, float]] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def broker_pids() -> list[int]:
    """The local RabbitMQ's Erlang VM(s): every ``beam.smp`` in ``/proc`` (none if remote)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "beam.smp":
                pids.append(int(comm.parent.name))
    return pids


def process_cpu(services: Services) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the MongoDB stand-in (when it runs here), Soketi, RabbitMQ and
    this process (publisher and subscribers), by pid; a process that can't be read is left
    out."""
    pids: dict[str, Sequence[int | None]] = {
        STANDIN: [services.standin.pid] if services.standin is not None else [],
        SOKETI: [services.soketi.pid],
        RABBITMQ: broker_pids(),
        BENCH: [os.getpid()],
    }
    snapshot: dict[str, dict[int, float]] = {}
    for name, candidates in pids.items():
        seconds: dict[int, float] = {}
        for pid in candidates:
            if pid is None:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                seconds[pid] = cpu_seconds(pid)
        if seconds:
            snapshot[name] = seconds
    return snapshot


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
        self._services = services
        self.topology = Topology(
            exchange=f"bench.{name}.events",
            queue=f"bench.{name}.fanout",
            retry_delays_s=tuple(float(s) for s in RETRY_DELAYS_S.split(",")),
        )
        self.http_port = devstack.free_port()
        self.log_path = services.workdir / f"worker-{name}.log"
        self._source = source
        self._popen: subprocess.Popen[bytes] | None = None
        env = {k: v for k, v in os.environ.items() if not _is_worker_setting(k)}
        env.update(
            RABBITMQ_URL=services.rabbitmq_url,
            EVENTS_EXCHANGE=self.topology.exchange,
            WORKER_QUEUE=self.topology.queue,
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
            HTTP_PORT=str(self.http_port),
            PREFETCH_COUNT=str(prefetch),
            LOG_FORMAT="json",
            LOG_LEVEL=log_level,
            # stats-update would mix into what the benchmark counts on private-admin.
            STATS_INTERVAL_S="0",
            PRESENCE_RECONCILE_S="0",
            PYTHONPATH=str(source),
            **(extra_env or {}),
        )
        self._env = env

    @property
    def pid(self) -> int:
        """The worker's process id."""
        if self._popen is None:
            raise RuntimeError("not started")
        return self._popen.pid

    def start(self) -> None:
        """Start the worker and wait until ``/readyz`` answers 200."""
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                cwd=self._source,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _http_ok(f"http://127.0.0.1:{self.http_port}/readyz"):
            code = self._popen.poll()
            if code is not None:
                raise RuntimeError(f"worker exited with {code}; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker not ready in {_READY_TIMEOUT_S:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM (the worker drains), then SIGKILL the group; return the exit code."""
        popen, self._popen = self._popen, None
        if popen is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        return popen.wait(timeout=_STOP_TIMEOUT_S)

    def usage(self) -> Usage:
        """CPU seconds so far, current and peak resident memory, from ``/proc``; and the
        other processes' CPU seconds (:func:`process_cpu`)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        memory = {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        return Usage(
            cpu_seconds(self.pid),
            memory.get("VmRSS", 0),
            memory.get("VmHWM", 0),
            process_cpu(self._services),
        )

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

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the worker's output."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def delete_topology(self, rabbitmq_url: str) -> None:
        """Delete this worker's queues and exchanges (after it stopped)."""
        topology = self.topology
        queues = [topology.queue, topology.dlq]
        queues += [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        exchanges = [topology.exchange, topology.dead_exchange, topology.return_exchange]
        exchanges += [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            for name in queues:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)
            for name in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(name)


def _is_worker_setting(name: str) -> bool:
    """Whether an inherited variable would configure the worker (they are all set here)."""
    return name.upper() in {field.upper() for field in Settings.model_fields} or name in {
        "PYTHONPATH"
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def temp_workdir() -> Path:
    """A fresh directory for logs of this run."""
    return Path(tempfile.mkdtemp(prefix="bazaar-bench-"))
