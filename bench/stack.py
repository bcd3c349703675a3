"""The services one benchmark run uses, all on loopback, and where the worker runs from.

RabbitMQ is the shared local broker (started if down, never stopped); Soketi and the
MongoDB stand-in (unless ``MONGODB_URL`` is set) are started here and stopped at the end.
Every worker run gets a fresh database seeded with the demo marketplace; the worker itself
runs as a subprocess (:mod:`bench.worker_process`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bench.receipts import Endpoint
from devtools import devstack
from devtools.marketplace import seed

REPO_ROOT = Path(__file__).resolve().parents[1]
SOKETI_APP_ID = "7007"
PAYLOAD_LIMIT_KB = 1024  # generous: the benchmark measures speed, not Soketi's size limit


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
    """Start Soketi and MongoDB on loopback and make sure RabbitMQ runs (databases come later)."""
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
        mongo_url, standin = devstack.mongodb_url_or_standin()
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
    await seed(services.mongodb_url, name)
    return name


async def fanout_documents(services: Services, database: str) -> dict[str, int]:
    """Documents in each of the worker's ``fanout_*`` collections of ``database`` (empty if
    the database can't be read)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        services.mongodb_url, serverSelectionTimeoutMS=3000
    )
    try:
        db = client[database]
        names = [n for n in await db.list_collection_names() if n.startswith("fanout_")]
        return {name: await db[name].count_documents({}) for name in sorted(names)}
    except PyMongoError:  # a column of the report, not worth failing the run over
        return {}
    finally:
        await client.close()


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


def temp_workdir() -> Path:
    """A fresh directory for logs of this run."""
    return Path(tempfile.mkdtemp(prefix="bazaar-bench-"))
