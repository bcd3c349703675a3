"""Reading a request body within a size and a time limit, the one way every route does it.

``content_length`` alone is not a limit: a chunked body has none, so the bytes are counted
as they arrive. A client that sends too slowly, or goes away mid-body, is a client fault
with a short machine code, never a 500.

The time limit is ``body_deadline``, which the server's middleware holds around every
handler: a body still arriving after the client timeout fails its reader with
``BodyTimeout``, whichever way the route reads it (``read_bounded``, ``request.read()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

#: The seconds a client has to send a request's headers, and (separately) its body.
DEFAULT_CLIENT_TIMEOUT_S: Final = 10.0
CLIENT_TIMEOUT_S: Final = web.AppKey("client_timeout_s", float)


class BodyTimeout(TimeoutError):
    """The body did not arrive within the client timeout."""


@contextmanager
def body_deadline(request: web.Request) -> Iterator[None]:
    """While inside, a body still arriving after the client timeout fails with ``BodyTimeout``.

    A ``TimeoutError``, so aiohttp's lingering read of an unread body stops on it too.
    """
    if not request.body_exists:
        yield
        return
    content = request.content
    timeout_s = request.config_dict.get(CLIENT_TIMEOUT_S, DEFAULT_CLIENT_TIMEOUT_S)

    def expire() -> None:
        if not content.is_eof():
            content.set_exception(BodyTimeout())

    handle = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        yield
    finally:
        handle.cancel()


class BodyError(Exception):
    """The body could not be read: ``status`` (400, 408 or 413) and a short ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body of ``request``, at most ``limit`` bytes, or raise ``BodyError``.

    413 ``body_too_large`` past the limit (declared or counted), 408 ``body_timeout`` when
    the body takes longer than the client timeout (under ``body_deadline``), 400
    ``body_incomplete`` when the client goes away or breaks the framing mid-body.
    """
    if (request.content_length or 0) > limit:
        raise BodyError(413, "body_too_large")
    raw = bytearray()
    try:
        while len(raw) <= limit:  # read() may return less than asked before the end
            chunk = await request.content.read(limit + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    except TimeoutError:  # BodyTimeout, from body_deadline
        raise BodyError(408, "body_timeout") from None
    except (ConnectionError, HttpProcessingError):
        raise BodyError(400, "body_incomplete") from None
    if len(raw) > limit:
        raise BodyError(413, "body_too_large")
    return bytes(raw)
