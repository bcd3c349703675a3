"""A throwaway three-node RabbitMQ cluster on loopback, for the broker-cluster test.

Each node has its own name (``fanout-a@localhost``...), AMQP and distribution ports, config
file (only its own listener), no plugins, and data and log directories under one temporary
directory. The nodes and the CLI share a private Erlang cookie through ``HOME`` (a temporary
``.erlang.cookie``), so the machine's default node (``rabbit@localhost``) is never touched.
Nodes run as the current user through the real server script (not the ``/usr/sbin`` wrapper,
which switches to the ``rabbitmq`` user and its own cookie).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.processes import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
QUEUES = Path("/usr/lib/rabbitmq/bin/rabbitmq-queues")


def available() -> bool:
    """Whether the RabbitMQ scripts this helper runs are installed."""
    return SERVER.exists() and CTL.exists() and QUEUES.exists()


@dataclass
class Node:
    """One node of the cluster: its name, ports, directory and server process."""

    name: str  # e.g. fanout-a@localhost
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


@dataclass
class Cluster:
    """Three (or ``size``) nodes joined into one cluster; ``stop_all`` cleans everything up."""

    root: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o600)
        for letter in "abcdefgh"[: self.size]:
            base = self.root / letter
            base.mkdir()
            self.nodes.append(Node(f"fanout-{letter}@localhost", free_port(), free_port(), base))

    # --- the environment of a node and of the CLI -------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        config = node.base / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n")
        plugins = node.base / "enabled_plugins"
        plugins.write_text("[].\n")
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base / "log"),
            "RABBITMQ_PID_FILE": str(node.base / "pid"),
            # the machine's rabbitmq-env.conf sets this for the default node; same for ours
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, node: Node, *args: str, tool: Path = CTL, timeout_s: float = 60) -> str:
        """Run ``rabbitmqctl -n node args`` (or another CLI ``tool``); its output, or raise."""
        result = subprocess.run(
            [str(tool), "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool.name} -n {node.name} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    # --- starting, joining, stopping ---------------------------------------------------------

    def start_node(self, node: Node) -> None:
        log = (node.base / "server.out").open("ab")
        node.process = subprocess.Popen(
            [str(SERVER)],
            env=self._env(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.ctl(node, "wait", str(node.base / "pid"), "--timeout", "60", timeout_s=90)

    def start(self) -> None:
        """Start every node and join the others to the first."""
        for node in self.nodes:
            self.start_node(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running nodes {running}")

    def running_nodes(self, via: Node) -> list[str]:
        out = self.ctl(via, "cluster_status", "--formatter", "json")
        return list(json.loads(out)["running_nodes"])

    def stop_node(self, node: Node) -> None:
        """Stop ``node`` (``rabbitmqctl stop``), killing its process group if that fails."""
        if node.process is None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl(node, "stop", timeout_s=60)
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        node.process = None

    def stop_all(self) -> None:
        """Stop every node still running (their process groups killed if need be)."""
        for node in self.nodes:
            try:
                self.stop_node(node)
            except Exception:  # cleanup: keep stopping the others
                if node.process is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(node.process.pid, signal.SIGKILL)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # --- quorum queues ----------------------------------------------------------------------

    def queue_placement(self, via: Node, queue: str) -> tuple[str, list[str]]:
        """The quorum queue's leader and members, as ``rabbitmqctl list_queues`` reports."""
        out = self.ctl(via, "list_queues", "name", "leader", "members", "--formatter", "json")
        for row in json.loads(out):
            if row["name"] == queue:
                return str(row["leader"]), [str(m) for m in row["members"]]
        raise LookupError(f"queue {queue} not found on {via.name}")

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def wait_leader(self, via: Node, queue: str, not_on: str, timeout_s: float = 30) -> str:
        """Wait until ``queue``'s leader is a node other than ``not_on``; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                leader, _ = self.queue_placement(via, queue)
                if leader and leader != not_on and re.match(r".+@.+", leader):
                    return leader
            except (RuntimeError, LookupError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new leader for {queue} within {timeout_s} s")
            time.sleep(0.5)  # the poll interval of a wait with a deadline, not a synchronisation
