"""The lookup cache on the real services: a cached user costs no query; renames show later."""

from __future__ import annotations

import asyncio
from typing import Any

from devtools.devstack import SoketiServer
from devtools.watch import Received
from tests.integration.harness import Fanout, envelope, running_worker

USERS_QUERIES = "bazaar_fanout_mongodb_query_seconds_count"


def _users_queries(fanout: Fanout) -> float:
    return fanout.sample(USERS_QUERIES, operation="find in users")


def _names(got: list[Received]) -> list[str]:
    return [r.data["name"] for r in got if r.event == "new-user"]


async def test_the_second_event_for_a_user_does_not_query_users(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """Two events naming the same user, one after the other: ``users`` is queried once."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url, mongo_url=mongo_url, soketi=soketi, names=names
    ) as fanout:
        await fanout.db.users.insert_one({"_id": "u1", "name": "Aarav", "email": "a@example.in"})
        sub = await fanout.subscriber("private-admin")
        await fanout.publish(envelope("user.registered", {"userId": "u1"}))
        await fanout.wait_settled(1, "delivered")
        assert _users_queries(fanout) == 1
        await fanout.publish(envelope("user.registered", {"userId": "u1"}))
        await fanout.wait_settled(2, "delivered")
        got = await sub.wait_for(lambda got: len(_names(got)) >= 2, 15)
        assert _names(got) == ["Aarav", "Aarav"]
        assert _users_queries(fanout) == 1


async def test_a_renamed_user_shows_the_new_name_after_the_ttl(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """With a short TTL, events after a rename carry the new name once the TTL has passed."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        lookup_cache_ttl_s=0.5,
    ) as fanout:
        await fanout.db.users.insert_one({"_id": "u1", "name": "Aarav", "email": "a@example.in"})
        sub = await fanout.subscriber("private-admin")
        await fanout.publish(envelope("user.registered", {"userId": "u1"}))
        await sub.wait_for(lambda got: _names(got) == ["Aarav"], 15)
        before = _users_queries(fanout)
        await fanout.db.users.update_one({"_id": "u1"}, {"$set": {"name": "Aarav K."}})
        # One event every 0.2 s until the new name arrives: at most a TTL (and a query) later.
        async with asyncio.timeout(15):
            while "Aarav K." not in _names(sub.events()):
                await fanout.publish(envelope("user.registered", {"userId": "u1"}))
                await asyncio.sleep(0.2)
        assert _users_queries(fanout) > before
