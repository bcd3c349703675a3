"""Child processes on loopback for the local stack and the bench, and free ports to give them.

Nothing here is on the worker's hot path, so it is plain synchronous code around
``subprocess``. Every process is started in its own process group, killed as a group on
``stop()`` and again at interpreter exit, so a test run leaves no orphan behind.
:class:`LocalService` adds "started means it answers" and ``restart()`` on the same ports;
the services themselves (Soketi, the MongoDB stand-in, RabbitMQ) are in
:mod:`devtools.devstack`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 40


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


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """Say whether a GET of ``url`` answers 200 (a readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ManagedProcess:
    """One child process in its own process group, with its output appended to a log file."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], cwd: Path, log_path: Path):
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def is_running(self) -> bool:
        """True while the process runs."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._popen.pid if self.is_running and self._popen is not None else None

    def start(self) -> None:
        """Start the process; it is stopped at interpreter exit if nobody stops it before."""
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

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL the group; return the exit code."""
        popen, self._popen = self._popen, None
        _live.discard(self)
        if popen is None:
            return None
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=grace_s)
        # Whatever the leader did, take the whole group down (node may leave helpers).
        _signal_group(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace_s)
        return popen.returncode

    def exited_early(self) -> int | None:
        """Return the exit code if the process has already died, else ``None``."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the process's output."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_live: set[ManagedProcess] = set()
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


def temp_dir(prefix: str) -> Path:
    """A fresh temporary directory, removed at interpreter exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _temp_dirs.append(path)
    return path


def wait_until(
    ready: Callable[[], bool], proc: ManagedProcess, *, what: str, timeout_s: float
) -> None:
    """Poll ``ready`` until it holds; stop ``proc`` and raise if it dies or ``timeout_s`` passes."""
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
        time.sleep(POLL_INTERVAL_S)


class LocalService:
    """A local service process on fixed ports: started means it answers; restartable."""

    __slots__ = ()
    process: ManagedProcess
    ready_timeout_s: float

    @property
    def url(self) -> str:
        """Where the service answers."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """Whether the service answers at :attr:`url` (a quick probe)."""
        raise NotImplementedError

    @property
    def is_running(self) -> bool:
        """True while the process runs."""
        return self.process.is_running

    @property
    def pid(self) -> int | None:
        """The service's process id while it runs (e.g. to read its CPU time)."""
        return self.process.pid

    def start(self) -> None:
        """Start the process and wait until the service answers."""
        self.process.start()
        wait_until(
            self.is_ready,
            self.process,
            what=f"{type(self).__name__} at {self.url}",
            timeout_s=self.ready_timeout_s,
        )

    def stop(self) -> None:
        """Kill the process group; ports are kept for ``restart()``."""
        self.process.stop()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports (connections are lost; the
        Mongo stand-in's in-memory data too)."""
        self.stop()
        self.start()
