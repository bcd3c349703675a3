"""The HTTP edge against a running worker: hostile requests get a 4xx, slow clients are cut off.

Every request here is written byte by byte on a raw socket: aiohttp's client would refuse to
send most of them (invalid UTF-8 in a header, a broken chunked body, a body never finished).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.test_auth import COOKIE, JWT_SECRET, token
from worker.web.body import DEFAULT_CLIENT_TIMEOUT_S

#: Asked of the worker; until the wiring passes it on, the default (10 s) applies.
CLIENT_TIMEOUT_S = 2.0
#: A slow client must be gone by then, whichever of the two timeouts is in force.
CUT_OFF_DEADLINE_S = max(CLIENT_TIMEOUT_S, DEFAULT_CLIENT_TIMEOUT_S) + 5
ADMIN_TOKEN = token("admin1", "admin")
POST_ROUTES = (
    "/pusher/auth",
    "/pusher/user-auth",
    "/console/api/publish",
    "/console/api/dlq/replay",
    "/console/api/dlq/purge",
    "/webhooks/soketi",
)
BAD_BYTES = b"ab\xff\xfe\xc3(cd"  # not UTF-8


@dataclass
class Edge:
    """A running worker, the structlog lines it wrote, and the stdlib records it left."""

    fanout: Fanout
    lines: list[MutableMapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back on a raw connection: status (0 when none), headers and body."""

    status: int
    head: bytes
    body: bytes


@pytest.fixture
async def edge(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Edge]:
    """A jwt-mode worker whose log lines are captured from start to stop."""
    with capture_logs() as lines:
        async with running_worker(
            rabbitmq_url=rabbitmq_url,
            mongo_url=mongo_url,
            soketi=soketi,
            names=names,
            auth_jwt_secret=JWT_SECRET,
            auth_cookie_name=COOKIE,
            http_client_timeout_s=CLIENT_TIMEOUT_S,
        ) as fanout:
            yield Edge(fanout, lines)
        _assert_clean_logs(lines, fanout)


def _assert_clean_logs(lines: list[MutableMapping[str, Any]], fanout: Fanout) -> None:
    """No secret, token or traceback in any line; client faults at warning, never error."""
    texts = [orjson.dumps(line, default=str).decode() for line in lines]
    for text in texts:
        for secret in (JWT_SECRET, fanout.soketi.secret, ADMIN_TOKEN, "s3cr3t"):
            assert secret not in text, text
        assert "Traceback" not in text, text
        assert "exc_info" not in text and "exception" not in text, text
    edge_lines = [line for line in lines if line.get("event") == "http.request_failed"]
    assert {line["log_level"] for line in edge_lines} <= {"warning"}, edge_lines
    assert not [line for line in lines if line.get("log_level") in ("error", "critical")]


@pytest.fixture
def stdlib_records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Warnings and worse that reached stdlib logging outside ``fanout.http`` (which the worker
    writes as one structlog line, checked by ``edge``); none may carry a traceback."""
    caplog.set_level(logging.WARNING)
    yield caplog.records
    escaped = [r for r in caplog.records if r.name != "fanout.http"]
    assert [r for r in escaped if r.exc_info or r.levelno >= logging.ERROR] == []


async def exchange(port: int, request: bytes, *, timeout_s: float = 15) -> Answer:
    """Send ``request`` whole and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    return _answer(raw)


def _answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return Answer(status, head, body)


def http(
    method: str, path: str, headers: dict[bytes, bytes] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, ``Connection: close``, ``Content-Length`` with a body or a POST."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(name + b": " + value)
    if body or method == "POST":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _form(socket_id: str = "123.456", channel: str = "private-admin") -> bytes:
    return f"socket_id={socket_id}&channel_name={channel}".encode()


ADMIN = ADMIN_TOKEN.encode()


def corpus() -> list[tuple[str, bytes]]:
    """Malformed requests, each a label and its bytes: every one must answer a 4xx."""
    nested = b"[" * 8000  # under the 8 KiB limit, deeper than json.loads can recurse
    form = {b"Content-Type": b"application/x-www-form-urlencoded"}
    as_json = {b"Content-Type": b"application/json"}
    admin = {b"Authorization": f"Bearer {ADMIN_TOKEN}".encode()}
    bad_bearer = {b"Authorization": b"Bearer " + BAD_BYTES}
    bad_cookie = {b"Cookie": COOKIE.encode() + b"=" + BAD_BYTES}
    cases: list[tuple[str, bytes]] = []
    for path in ("/pusher/auth", "/pusher/user-auth"):
        cases += [
            (f"{path} nested json", http("POST", path, as_json | admin, nested)),
            (f"{path} nested object", http("POST", path, as_json | admin, b'{"a":' * 1500)),
            (f"{path} json not utf-8", http("POST", path, as_json | admin, b'{"x":"' + BAD_BYTES)),
            (f"{path} form not utf-8", http("POST", path, form | admin, b"socket_id=" + BAD_BYTES)),
            (f"{path} arabic digits", http("POST", path, form | admin, _form("١٢٣.٤٥٦"))),
            (f"{path} bad bearer", http("POST", path, form | bad_bearer, _form())),
            (f"{path} bad cookie", http("POST", path, form | bad_cookie, _form())),
        ]
    for path in ("/channels/private-admin/events", "/console/api/ops", "/console/api/dlq"):
        cases += [
            (f"{path} bad bearer", http("GET", path, bad_bearer)),
            (f"{path} bad cookie", http("GET", path, bad_cookie)),
        ]
    for path in ("/console/api/publish", "/console/api/dlq/replay", "/console/api/dlq/purge"):
        cases += [
            (f"{path} bad bearer", http("POST", path, as_json | bad_bearer, b"{}")),
            (f"{path} nested json", http("POST", path, as_json | admin, nested)),
            (f"{path} json not utf-8", http("POST", path, as_json | admin, b'{"x":"' + BAD_BYTES)),
        ]
    huge = {b"X-Padding": b"s3cr3t" * 3000, **admin}
    cases += [
        ("huge header", http("GET", "/healthz", huge)),
        ("huge header on auth", http("POST", "/pusher/auth", huge | form, _form())),
        (
            "too many headers",
            http("GET", "/healthz", {f"X-H{i}".encode(): b"1" for i in range(300)}),
        ),
        ("header with control byte", http("GET", "/healthz", {b"X-Odd": b"a\x01" + b"s3cr3t"})),
        (
            "path not utf-8",
            b"GET /channels/\xff/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        ("unknown route", http("GET", "/nowhere")),
        ("wrong method", http("GET", "/pusher/auth")),
        ("webhook garbage", http("POST", "/webhooks/soketi", as_json, b"[" * 5000)),
        ("bad chunk framing", _chunked_head("/pusher/auth") + b"zz\r\nabc\r\n0\r\n\r\n"),
    ]
    return cases


def _chunked_head(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    ).encode()


async def chunked_oversize(port: int, path: str, total: int = 10 * 1024 * 1024) -> Answer:
    """POST ``total`` bytes in 64 KiB chunks (no Content-Length) while reading the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"

    async def send() -> None:
        try:
            writer.write(_chunked_head(path))
            for _ in range(total // 65536):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass  # the server answered and closed: what we want

    sender = asyncio.create_task(send())
    try:
        raw = await asyncio.wait_for(reader.read(), 30)
    except ConnectionError:
        raw = b""
    finally:
        sender.cancel()
        writer.close()
    return _answer(raw)


async def _publish_and_count(fanout: Fanout, count: int) -> None:
    """Publish ``count`` admin-bound events and wait until each arrived exactly once."""
    sub = await fanout.subscriber("private-admin")
    events = [envelope("user.registered", {"userId": f"edge-{i}"}) for i in range(count)]
    for event in events:
        await fanout.publish(event)
        await asyncio.sleep(0)
    await sub.wait_for(lambda got: len(got) >= count, 30)
    assert Counter(r.data["eventId"] for r in sub.events()) == Counter(e["id"] for e in events)


async def _healthz(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status


def _assert_answer_clean(label: str, answer: Answer, fanout: Fanout) -> None:
    """A 4xx with no secret, token or traceback in it."""
    assert 400 <= answer.status < 500, (label, answer)
    text = answer.head + answer.body
    for secret in (JWT_SECRET, fanout.soketi.secret, ADMIN_TOKEN, "s3cr3t"):
        assert secret.encode() not in text, (label, answer)
    assert b"Traceback" not in text, (label, answer)


async def test_malformed_requests_answer_4xx_while_events_flow(
    edge: Edge, stdlib_records: list[logging.LogRecord]
) -> None:
    """Each malformed request (nested JSON, bad UTF-8, huge headers, chunked oversize bodies on
    every POST route) answers a 4xx without secrets while every event still arrives once."""
    fanout = edge.fanout
    port = fanout.http_port
    flow = asyncio.create_task(_publish_and_count(fanout, 40))
    cases = corpus()
    answers = await asyncio.gather(*(exchange(port, raw) for _, raw in cases))
    for (label, _), answer in zip(cases, answers, strict=True):
        print(f"{label}: {answer.status} {answer.body[:60]!r}")
        _assert_answer_clean(label, answer, fanout)
        if b"application/json" in answer.head:  # aiohttp's parser answers in plain text
            assert "error" in orjson.loads(answer.body), (label, answer)
    oversize = await asyncio.gather(*(chunked_oversize(port, path) for path in POST_ROUTES))
    for path, answer in zip(POST_ROUTES, oversize, strict=True):
        print(f"chunked oversize {path}: {answer.status} {answer.body[:60]!r}")
        _assert_answer_clean(f"chunked oversize {path}", answer, fanout)
        assert orjson.loads(answer.body)["error"] in {"body_too_large", "request_entity_too_large"}
    faults = [line for line in edge.lines if line.get("event") == "http.request_failed"]
    assert {"LineTooLong", "BadHttpMessage"} <= {line.get("cause") for line in faults}
    odd = await exchange(port, http("GET", "/healthz", {b"X-Odd": BAD_BYTES}))
    assert odd.status == 200, odd  # a header nobody reads may hold any bytes
    await flow
    assert await _healthz(port) == 200
    assert fanout.settled("dead_lettered") == 0  # nothing was published by the console


async def _slow_headers(port: int) -> float:
    """Send a header a byte at a time, never finishing; the seconds until the server hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while time.monotonic() - started < CUT_OFF_DEADLINE_S:
            writer.write(b"a")
            await writer.drain()
            try:  # the pace of a slowloris client; ends early when the server closes
                if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                    break
            except TimeoutError:
                continue
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def _slow_body(port: int, path: str) -> tuple[float, Answer]:
    """Announce 1000 bytes, send one a while; the seconds until the server answered and hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    raw = b""
    try:
        headers = {b"Content-Type": b"application/json", b"Authorization": b"Bearer " + ADMIN}
        head = http("POST", path, headers, b"")
        writer.write(head.replace(b"Content-Length: 0", b"Content-Length: 1000") + b"{")
        while time.monotonic() - started < CUT_OFF_DEADLINE_S:
            writer.write(b" ")
            await writer.drain()
            try:
                got = await asyncio.wait_for(reader.read(4096), 0.5)
            except TimeoutError:
                continue
            raw += got
            if got == b"":
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, _answer(raw)


async def _gone_mid_body(port: int, path: str) -> None:
    """Announce 1000 bytes, send 10, and close the connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = http("POST", path, {b"Content-Type": b"application/json"}, b"")
    writer.write(head.replace(b"Content-Length: 0", b"Content-Length: 1000") + b'{"socket_i')
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_slow_and_vanishing_clients_are_cut_off(
    edge: Edge, stdlib_records: list[logging.LogRecord]
) -> None:
    """50 slowloris header connections and a slow body on every POST route are closed after the
    client timeout, clients gone mid-body leave no error, and /healthz and the events carry on."""
    fanout = edge.fanout
    port = fanout.http_port
    headers = [asyncio.create_task(_slow_headers(port)) for _ in range(50)]
    bodies = [asyncio.create_task(_slow_body(port, path)) for path in POST_ROUTES]
    for _ in range(3):
        await asyncio.gather(*(_gone_mid_body(port, path) for path in POST_ROUTES))
    assert await _healthz(port) == 200
    await _publish_and_count(fanout, 20)
    assert await _healthz(port) == 200  # answered while the slow clients still hang on

    header_times = await asyncio.gather(*headers)
    print(f"slow headers cut off after {min(header_times):.1f}-{max(header_times):.1f}s")
    assert max(header_times) < CUT_OFF_DEADLINE_S, header_times
    for path, (seconds, answer) in zip(POST_ROUTES, await asyncio.gather(*bodies), strict=True):
        print(f"slow body {path}: {answer.status} {answer.body[:60]!r} after {seconds:.1f}s")
        assert seconds < CUT_OFF_DEADLINE_S, (path, seconds)
        _assert_answer_clean(path, answer, fanout)
    assert await _healthz(port) == 200
