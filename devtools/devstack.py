"""The local services on loopback for tests, the demo and benchmarks.

Each runs as a :class:`devtools.processes.ManagedProcess` (own process group, killed on
``stop()`` and at interpreter exit).

- RabbitMQ: :func:`ensure_rabbitmq` starts the system's ``rabbitmq-server -detached``
  when nothing listens yet (it is shared and outlives us, like a system service).
- Soketi 1.6.1: :func:`start_soketi` runs the copy installed by ``npm ci --prefix
  tools/soketi``, configured through a JSON file because Soketi ignores ``--port``.
  The file pins the HTTP/WebSocket server, the metrics server and the UDP cluster
  discovery to 127.0.0.1; left alone, discovery broadcasts to 255.255.255.255.
- MongoDB: :func:`start_mongo_standin` runs the ``nx-27017`` wire-protocol server with an
  in-memory database. Its data does not survive ``restart()``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from devtools.processes import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    free_port,
    http_ok,
    tcp_is_open,
    temp_dir,
)

# devtools is not shipped: it finds the repository's npm-installed Soketi from its own path.
REPO_ROOT = Path(__file__).resolve().parents[1]
SOKETI_BIN = REPO_ROOT / "tools" / "soketi" / "node_modules" / ".bin" / "soketi"

# Soketi 1.6.1 defaults (dist/server.js `eventLimits`, overridable per app in dist/app.js),
# named here so tests and benchmarks can assert against the same numbers.
SOKETI_MAX_EVENT_PAYLOAD_KB = 100
SOKETI_MAX_EVENT_CHANNELS_AT_ONCE = 100
SOKETI_MAX_EVENT_BATCH_SIZE = 10
SOKETI_MAX_EVENT_NAME_LENGTH = 200
SOKETI_MAX_CHANNEL_NAME_LENGTH = 200


# --- RabbitMQ --------------------------------------------------------------------------


def ensure_rabbitmq(host: str = LOOPBACK, port: int = 5672, timeout_s: float = 90) -> None:
    """Make sure RabbitMQ accepts connections on ``host:port``, starting the local one if needed."""
    if tcp_is_open(host, port):
        return
    server = shutil.which("rabbitmq-server")
    if server is None or host not in {LOOPBACK, "localhost"}:
        raise RuntimeError(
            f"RabbitMQ is not reachable at {host}:{port} and cannot be started here "
            "(rabbitmq-server is not on PATH or the host is not loopback); start it or set "
            "RABBITMQ_URL"
        )
    # -detached daemonizes: the broker is a shared system service, so it is not ours to stop.
    subprocess.run([server, "-detached"], check=False, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while not tcp_is_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rabbitmq-server -detached was run but nothing listens on {host}:{port} "
                f"after {timeout_s:.0f} s; see /var/log/rabbitmq/"
            )
        time.sleep(0.25)
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        remaining_s = max(1.0, deadline - time.monotonic())
        done = subprocess.run(
            [ctl, "await_startup", "--timeout", str(int(remaining_s))],
            check=False,
            capture_output=True,
            text=True,
            timeout=remaining_s + 10,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl await_startup failed: {done.stderr.strip()[-500:]}")


# --- Soketi ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoketiConfig:
    """Everything a Soketi instance was started with; ports stay fixed across restarts."""

    app_id: str
    key: str
    secret: str
    port: int
    metrics_port: int
    cluster_port: int
    max_payload_kb: int = SOKETI_MAX_EVENT_PAYLOAD_KB
    webhooks: tuple[dict[str, Any], ...] = ()
    host: str = LOOPBACK
    #: Serve Prometheus ``/metrics`` on ``metrics_port`` (loopback only).
    metrics_enabled: bool = False

    def as_soketi_json(self) -> dict[str, Any]:
        """Render Soketi's flat dotted-key config, everything bound to loopback."""
        app = {
            "id": self.app_id,
            "key": self.key,
            "secret": self.secret,
            "enableClientMessages": False,
            "enabled": True,
            "maxEventPayloadInKb": self.max_payload_kb,
            "webhooks": list(self.webhooks),
        }
        return {
            "host": self.host,
            "port": self.port,
            "debug": False,
            "appManager.array.apps": [app],
            "eventLimits.maxPayloadInKb": self.max_payload_kb,
            "metrics.enabled": self.metrics_enabled,
            "metrics.host": LOOPBACK,
            "metrics.port": self.metrics_port,
            # Discovery uses unicast when set, so nothing is broadcast or multicast.
            "cluster.hostname": LOOPBACK,
            "cluster.address": LOOPBACK,
            "cluster.port": self.cluster_port,
            "cluster.unicast": LOOPBACK,
            "cluster.broadcast": LOOPBACK,
            # SIGTERM waits this long before closing; tests stop and restart often.
            "shutdownGracePeriod": 100,
        }


@dataclass(slots=True)
class SoketiServer(LocalService):
    """A Soketi process started by :func:`start_soketi`: a frozen config plus its process."""

    config: SoketiConfig
    process: ManagedProcess = field(repr=False)
    ready_timeout_s: float = 20.0

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def app_id(self) -> str:
        return self.config.app_id

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def secret(self) -> str:
        return self.config.secret

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Soketi's Prometheus endpoint; it answers only when started with ``metrics=True``."""
        return f"http://{self.host}:{self.config.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def is_ready(self) -> bool:
        return http_ok(f"{self.url}/")


def start_soketi(
    app_id: str,
    key: str,
    secret: str,
    *,
    port: int | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    max_payload_kb: int = SOKETI_MAX_EVENT_PAYLOAD_KB,
    log_path: Path | None = None,
    metrics: bool = False,
) -> SoketiServer:
    """Start Soketi on loopback with one app and return once its HTTP API answers."""
    if not SOKETI_BIN.exists():
        raise RuntimeError(
            f"soketi is not installed at {SOKETI_BIN}; run `npm ci --prefix tools/soketi`"
        )
    config = SoketiConfig(
        app_id=app_id,
        key=key,
        secret=secret,
        port=port if port is not None else free_port(),
        metrics_port=free_port(),
        cluster_port=free_port(socket.SOCK_DGRAM),
        max_payload_kb=max_payload_kb,
        webhooks=tuple(webhooks or ()),
        metrics_enabled=metrics,
    )
    workdir = temp_dir("bazaar-soketi-")
    config_path = workdir / "soketi.json"
    config_path.write_text(json.dumps(config.as_soketi_json(), indent=2), encoding="utf-8")
    process = ManagedProcess(
        [str(SOKETI_BIN), "start", f"--config={config_path}"],
        env=_soketi_env(config),
        # Soketi loads a .env from its working directory; an empty temp dir has none.
        cwd=workdir,
        log_path=log_path if log_path is not None else workdir / "soketi.log",
    )
    server = SoketiServer(config=config, process=process)
    server.start()
    return server


def _soketi_env(config: SoketiConfig) -> dict[str, str]:
    # Soketi's SOKETI_* variables override the config file, and the worker's own
    # SOKETI_HOST/SOKETI_PORT mean something else, so none of the caller's are passed on.
    env = {name: value for name, value in os.environ.items() if not name.startswith("SOKETI_")}
    env.update(
        SOKETI_DEFAULT_APP_ID=config.app_id,
        SOKETI_DEFAULT_APP_KEY=config.key,
        SOKETI_DEFAULT_APP_SECRET=config.secret,
    )
    return env


# --- MongoDB wire-protocol stand-in ----------------------------------------------------


@dataclass(slots=True)
class MongoStandin(LocalService):
    """An ``nx-27017`` process with an in-memory database; data is lost on ``restart()``."""

    host: str
    port: int
    process: ManagedProcess = field(repr=False)
    ready_timeout_s: float = 20.0

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def is_ready(self) -> bool:
        return _mongo_pings(self.url)


def _mongo_pings(url: str) -> bool:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=250, connectTimeoutMS=250
    )
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def start_mongo_standin(port: int | None = None) -> MongoStandin:
    """Start the ``nx-27017`` MongoDB wire server on loopback and return once it answers ping."""
    binary = Path(sys.executable).parent / "nx-27017"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing; install the dev extras (pip install -e .[dev])")
    port = port if port is not None else free_port()
    workdir = temp_dir("bazaar-mongo-")
    process = ManagedProcess(
        [
            str(binary),
            "--db",
            "memory",
            "--host",
            LOOPBACK,
            "-p",
            str(port),
            # Defaults are shared /tmp paths; parallel instances would clobber each other.
            "--log-file",
            str(workdir / "nx-27017.log"),
            "--pid-file",
            str(workdir / "nx-27017.pid"),
        ],
        env=dict(os.environ),
        cwd=workdir,
        log_path=workdir / "nx-27017.out",
    )
    standin = MongoStandin(host=LOOPBACK, port=port, process=process)
    standin.start()
    return standin


def mongodb_url_or_standin() -> tuple[str, MongoStandin | None]:
    """``MONGODB_URL`` when set (a real MongoDB), else a fresh stand-in, which the caller
    stops (``None`` when none was started)."""
    url = os.environ.get("MONGODB_URL")
    if url is not None:
        return url, None
    standin = start_mongo_standin()
    return standin.url, standin
