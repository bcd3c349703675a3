"""The Node outbox (clients/node/src/outbox.js) on the real broker and the MongoDB stand-in.

``node --test test/outbox.test.js`` adds events (inside a transaction too), relays them
through a loopback proxy that the test cuts and restores mid-way, and kills a relay between
the broker's confirm and the mark: all events arrive in order, and only the unmarked repeats.
"""

from __future__ import annotations

import pytest

from tests.conftest import Names
from tests.integration.test_node_publisher import NODE, NODE_DIR, NPM, _run

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are not on PATH (Node 20+ is needed)"
)

OUTBOX_TESTS = (
    "add validates like publish and writes nothing for an invalid envelope",
    "add with a session commits with the business write and aborts with it",
    "delivers 50 events in order, none lost, across a broker outage mid-way",
    "a relay that dies between publish and mark repeats only the unmarked entry",
)


async def test_node_outbox_suite_passes_against_the_broker_and_mongodb(
    rabbitmq_url: str, mongo_url: str, names: Names
) -> None:
    """Every outbox test passes; none is skipped."""
    if not (NODE_DIR / "node_modules" / "mongodb").is_dir():
        pytest.fail("clients/node has no node_modules/mongodb: run `make install`")
    assert NODE is not None
    code, out, err = await _run(
        NODE,
        "--test",
        "test/outbox.test.js",
        env={
            "FANOUT_TEST_AMQP_URL": rabbitmq_url,
            "FANOUT_TEST_EXCHANGE": names.exchange,
            "FANOUT_TEST_MONGODB_URL": mongo_url,
            "FANOUT_TEST_MONGODB_DB": names.db,
        },
    )
    report = f"stdout:\n{out[-6000:]}\nstderr:\n{err[-3000:]}"
    assert code == 0, report
    assert "# fail 0" in out, report
    assert "# SKIP" not in out, report
    for name in OUTBOX_TESTS:
        assert f"- {name}" in out, report
    assert f"# pass {len(OUTBOX_TESTS)}" in out, report
