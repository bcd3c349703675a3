"""A loopback TCP proxy whose connections a test can cut and restore, to inject outages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to a target; ``cut()`` resets connections and refuses new ones.

    Faults are injected at the network, as an outage would look to the worker: connections
    reset, new connections refused, until ``restore()`` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._rejected = asyncio.Condition()
        self.connections = 0
        self.rejected = 0

    @property
    def is_up(self) -> bool:
        """True while the proxy forwards connections."""
        return not self._cut

    async def start(self) -> TcpProxy:
        """Listen on ``self.port``."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        """Reset every open connection, and every new one until ``restore()``."""
        self._cut = True
        for writer in list(self._writers):
            _reset(writer)
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._writers.clear()

    async def wait_rejected(self, count: int, timeout_s: float = 30) -> None:
        """Wait until ``count`` connection attempts were reset since the proxy started."""
        async with asyncio.timeout(timeout_s), self._rejected:
            await self._rejected.wait_for(lambda: self.rejected >= count)

    async def restore(self) -> None:
        """Forward new connections again."""
        self._cut = False

    async def close(self) -> None:
        """Cut and stop listening for good."""
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(writer)
            async with self._rejected:
                self.rejected += 1
                self._rejected.notify_all()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: an abrupt failure, as a crash or outage looks."""
    with contextlib.suppress(Exception):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
