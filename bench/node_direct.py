"""The ``node-direct`` baseline: the seed's way in Node, in a process of its own.

``bench/node/direct.js`` calls ``pusher.trigger`` (the npm package pinned in
``bench/node/package.json``) once per event on the event's witness channel, 32 in flight
over a keep-alive ``http.Agent``: what ``direct-32`` does, in Node. The bench reads that
process's CPU time from ``/proc/<pid>/stat`` between "go" and "done" (its start-up and
loading of the stream are outside the window), so its CPU per event compares with the
worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.paths import Options, Result, events_per_s, run_timeout_s, with_tally
from bench.receipts import Receivers
from bench.stack import Services
from bench.stream import BenchEvent, direct_payload, stamp, watched_channels
from bench.usage import cpu_seconds

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "direct.js"
IN_FLIGHT = 32
READY_TIMEOUT_S = 30.0


def ensure_installed() -> None:
    """Install the pinned ``pusher`` package (``npm ci``) if ``make install`` has not."""
    if (NODE_DIR / "node_modules" / "pusher" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("node-direct needs npm: run `make install` or skip node-direct")
    subprocess.run(
        [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
    )


async def node_direct(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """``pusher.trigger`` per event from a Node process, 32 in flight, keep-alive agent."""
    await asyncio.to_thread(ensure_installed)
    soketi = services.soketi
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        events_path, sent_path = Path(tmp) / "events.json", Path(tmp) / "sent.json"
        for event in events:
            stamp(event.envelope)  # direct_payload reads occurredAt; Node sets the timestamp
        stream = [
            [event.witness, event.pusher_event, _without_timestamp(direct_payload(event))]
            for event in events
        ]
        events_path.write_bytes(orjson.dumps(stream))
        env = dict(
            os.environ,
            SOKETI_APP_ID=soketi.app_id,
            SOKETI_KEY=soketi.key,
            SOKETI_SECRET=soketi.secret,
            SOKETI_HOST=soketi.host,
            SOKETI_PORT=str(soketi.port),
            IN_FLIGHT=str(IN_FLIGHT),
        )
        node = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(SCRIPT),
            str(events_path),
            str(sent_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            await _expect(node, "ready", READY_TIMEOUT_S)
            async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
                rx.expect(events)
                cpu_before = cpu_seconds(node.pid)
                started = time.time()
                _tell(node, "go")
                await _expect(node, "done", run_timeout_s(len(events)))
                cpu_after = cpu_seconds(node.pid)
                sent = json.loads(sent_path.read_text())
                for event, sent_ms in zip(events, sent["sentMs"], strict=True):
                    rx.sent(event.event_id, sent_ms / 1000)
                tally = await rx.finish(run_timeout_s(len(events)))
        finally:
            await _close(node)
    result = Result("node-direct", len(events), ages_s=tally.ages_s)
    result.rate = events_per_s(len(events), started, tally.last_receive)
    result.node_cpu_s_per_1k = (cpu_after - cpu_before) / len(events) * 1000
    result.note = f"pusher {_pusher_version()} (npm), {IN_FLIGHT} in flight, keep-alive agent"
    if sent["failures"]:
        result.note += f"; {len(sent['failures'])} calls failed ({sent['failures'][0]})"
    return with_tally(result, tally)


def _without_timestamp(payload: dict[str, object]) -> dict[str, object]:
    """The payload without ``timestamp``, which Node sets when it sends."""
    return {key: value for key, value in payload.items() if key != "timestamp"}


def _tell(node: asyncio.subprocess.Process, line: str) -> None:
    assert node.stdin is not None
    node.stdin.write(f"{line}\n".encode())


async def _expect(node: asyncio.subprocess.Process, word: str, timeout_s: float) -> None:
    """Wait for ``word`` on the Node process's stdout; raise if it exits or times out."""
    assert node.stdout is not None
    line = await asyncio.wait_for(node.stdout.readline(), timeout_s)
    if line.decode().strip() != word:
        raise RuntimeError(f"node-direct: expected {word!r}, got {line!r} (exit {node.returncode})")


async def _close(node: asyncio.subprocess.Process) -> None:
    """Close its stdin (it exits), kill it if it does not within 5 s."""
    if node.stdin is not None:
        node.stdin.close()
    try:
        await asyncio.wait_for(node.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            node.kill()
        await node.wait()


def _pusher_version() -> str:
    manifest = NODE_DIR / "node_modules" / "pusher" / "package.json"
    return str(json.loads(manifest.read_text())["version"])
