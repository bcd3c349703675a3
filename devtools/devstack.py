"""Start the local services on loopback for tests, the demo and benchmarks.

Nothing here is on the worker's hot path, so it is plain synchronous code around
``subprocess``. Every process is started in its own process group, killed as a group on
``stop()`` and again at interpreter exit, so a test run leaves no orphan behind.

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

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

REPO_ROOT = Path(__file__).resolve().parents[1]
SOKETI_BIN = REPO_ROOT / "tools" / "soketi" / "node_modules" / ".bin" / "soketi"

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL_S = 0.05
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 40

# Soketi 1.6.1 defaults (dist/server.js `eventLimits`, overridable per app in dist/app.js),
# named here so tests and benchmarks can assert against the same numbers.
SOKETI_MAX_EVENT_PAYLOAD_KB = 100
SOKETI_MAX_EVENT_CHANNELS_AT_ONCE = 100
SOKETI_MAX_EVENT_BATCH_SIZE = 10
SOKETI_MAX_EVENT_NAME_LENGTH = 200
SOKETI_MAX_CHANNEL_NAME_LENGTH = 200


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 that was free a moment ago (TCP unless ``kind`` says UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_is_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Say whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


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


# --- process handling ------------------------------------------------------------------


class _ManagedProcess:
    """One child process in its own process group, with its output appended to a log file."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], cwd: Path, log_path: Path):
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._popen.pid if self.is_running and self._popen is not None else None

    def start(self) -> None:
        if self.is_running:
            raise RuntimeError(f"{self.argv[0]} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills children too
            )
        _live.add(self)

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        popen, self._popen = self._popen, None
        _live.discard(self)
        if popen is None:
            return
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=grace_s)
        # Whatever the leader did, take the whole group down (node may leave helpers).
        _signal_group(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace_s)

    def exited_early(self) -> int | None:
        """Return the exit code if the process has already died, else ``None``."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_live: set[_ManagedProcess] = set()
_temp_dirs: list[Path] = []
_cleanup_lock = threading.Lock()


@atexit.register
def _stop_everything() -> None:
    """Kill every process this module started and remove its temporary files."""
    with _cleanup_lock:
        for proc in list(_live):
            proc.stop(grace_s=1.0)
        for path in _temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        _temp_dirs.clear()


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _temp_dirs.append(path)
    return path


def _wait_until(
    ready: Callable[[], bool], proc: _ManagedProcess, *, what: str, timeout_s: float
) -> None:
    """Poll ``ready`` until it holds, the process dies, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        code = proc.exited_early()
        if code is not None:
            proc.stop()
            raise RuntimeError(f"{what} exited with code {code}; log tail:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(
                f"{what} was not ready after {timeout_s:.0f} s; log tail:\n{proc.log_tail()}"
            )
        time.sleep(_POLL_INTERVAL_S)


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
            "metrics.enabled": False,
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


class _Service:
    """Start, stop and restart of a local service process on fixed ports."""

    __slots__ = ()
    _process: _ManagedProcess
    ready_timeout_s: float

    @property
    def url(self) -> str:
        """Where the service answers."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def is_running(self) -> bool:
        """True while the process runs."""
        return self._process.is_running

    @property
    def pid(self) -> int | None:
        """The service's process id while it runs (e.g. to read its CPU time)."""
        return self._process.pid

    def start(self) -> None:
        """Start the process and wait until the service answers."""
        self._process.start()
        _wait_until(
            self._ready,
            self._process,
            what=f"{type(self).__name__} at {self.url}",
            timeout_s=self.ready_timeout_s,
        )

    def stop(self) -> None:
        """Kill the process group; ports are kept for ``restart()``."""
        self._process.stop()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports (connections are lost; the
        Mongo stand-in's in-memory data too)."""
        self.stop()
        self.start()


@dataclass(slots=True)
class SoketiServer(_Service):
    """A Soketi process started by :func:`start_soketi`: a frozen config plus its process."""

    config: SoketiConfig
    _process: _ManagedProcess = field(repr=False)
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
    def log_path(self) -> Path:
        return self._process.log_path

    def _ready(self) -> bool:
        return _http_ok(f"{self.url}/")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_soketi(
    app_id: str,
    key: str,
    secret: str,
    *,
    port: int | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    max_payload_kb: int = SOKETI_MAX_EVENT_PAYLOAD_KB,
    log_path: Path | None = None,
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
    )
    workdir = _temp_dir("bazaar-soketi-")
    config_path = workdir / "soketi.json"
    config_path.write_text(json.dumps(config.as_soketi_json(), indent=2), encoding="utf-8")
    process = _ManagedProcess(
        [str(SOKETI_BIN), "start", f"--config={config_path}"],
        env=_soketi_env(config),
        # Soketi loads a .env from its working directory; an empty temp dir has none.
        cwd=workdir,
        log_path=log_path if log_path is not None else workdir / "soketi.log",
    )
    server = SoketiServer(config=config, _process=process)
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
class MongoStandin(_Service):
    """An ``nx-27017`` process with an in-memory database; data is lost on ``restart()``."""

    host: str
    port: int
    _process: _ManagedProcess = field(repr=False)
    ready_timeout_s: float = 20.0

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def _ready(self) -> bool:
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
    workdir = _temp_dir("bazaar-mongo-")
    process = _ManagedProcess(
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
    standin = MongoStandin(host=LOOPBACK, port=port, _process=process)
    standin.start()
    return standin
