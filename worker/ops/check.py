"""``check``: one verdict per service, using the same adapters as the worker."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aio_pika
import aiohttp
from pymongo.uri_parser import parse_uri

import worker.mongo.gateway as mongo
from worker.broker.connections import connect
from worker.config import Settings
from worker.errors import FanoutError
from worker.retry import RetryPolicy
from worker.soketi.client import SoketiClient

_ONCE = RetryPolicy(attempts=1, total_s=10, initial_s=0, max_wait_s=0)


async def run_checks(settings: Settings, timeout_s: float = 5.0) -> list[tuple[str, str | None]]:
    """Check RabbitMQ, MongoDB and Soketi concurrently; ``None`` means ok."""
    names = ("RabbitMQ", "MongoDB", "Soketi")
    checks = (_rabbitmq(settings), _mongodb(settings, timeout_s), _soketi(settings, timeout_s))
    answers = await asyncio.gather(
        *(asyncio.wait_for(c, timeout_s + 1) for c in checks), return_exceptions=True
    )
    results: list[tuple[str, str | None]] = []
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, TimeoutError):
            results.append((name, f"no answer within {timeout_s}s"))
        elif isinstance(answer, BaseException):
            results.append((name, _describe(answer)))
        else:
            results.append((name, None))
    return results


def _describe(error: BaseException) -> str:
    if isinstance(error, FanoutError):
        return str(error)
    return f"{type(error).__name__}: {error}".split("\n")[0][:200]


async def _rabbitmq(settings: Settings) -> None:
    url = settings.rabbitmq_url.get_secret_value()
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 5672}"
    try:
        connection = await connect(url, purpose="check", timeout_s=5)
    except ConnectionError as error:
        raise FanoutError(f"cannot connect to {where}: {_os_reason(error)}") from error
    except aio_pika.exceptions.ProbableAuthenticationError as error:
        raise FanoutError(f"{where} refused the credentials in RABBITMQ_URL") from error
    await connection.close()


def _os_reason(error: BaseException) -> str:
    for candidate in (error, *error.args):
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror.lower()
    text = str(error)
    return "connection refused" if "111" in text or "refused" in text.lower() else text[:120]


async def _mongodb(settings: Settings, timeout_s: float) -> None:
    url = settings.mongodb_url.get_secret_value()
    nodes = ",".join(f"{host}:{port}" for host, port in parse_uri(url)["nodelist"])
    client = mongo.connect(url, timeout_s=timeout_s)
    try:
        await mongo.MongoGateway(client[settings.mongodb_db], _ONCE).probe()
    except FanoutError as error:
        raise FanoutError(f"no MongoDB server answered at {nodes} within {timeout_s:g}s") from error
    finally:
        await client.close()


async def _soketi(settings: Settings, timeout_s: float) -> None:
    async with aiohttp.ClientSession() as session:
        client = SoketiClient.from_settings(settings, session, retry=_ONCE, timeout_s=timeout_s)
        await client.ping()
