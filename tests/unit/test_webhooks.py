"""Pure tests of webhook checks, personal-channel parsing, drift, presence ids and stats figures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from worker.mongo.presence import PresenceState
from worker.mongo.stats import WorkerReport
from worker.web.presence_rules import (
    MAX_AGE_MS,
    Change,
    PersonalAccount,
    Rejected,
    ReplayGuard,
    Webhook,
    changes_of,
    drift,
    event_of,
    signature_of,
    subject_of,
    subject_of_key,
    verify,
)
from worker.web.stats import EventRates, fleet_payload

KEY, SECRET = "app-key", "app-secret"
NOW_MS = 1_800_000_000_000
AT = datetime.fromtimestamp(NOW_MS / 1000, UTC)


def _body(time_ms: int = NOW_MS, *events: tuple[str, str]) -> bytes:
    pairs = events or (("channel_occupied", "private-user-7"),)
    return orjson.dumps(
        {"time_ms": time_ms, "events": [{"name": n, "channel": c} for n, c in pairs]}
    )


def _verify(body: bytes, key: str | None = KEY, signature: str | None = None) -> Webhook:
    sig = signature_of(SECRET, body) if signature is None else signature
    return verify(body, key, sig, app_key=KEY, secret=SECRET, now_ms=NOW_MS)


def test_signature_is_soketis_hmac_of_the_raw_body() -> None:
    """The expected signature equals Soketi 1.6.1's createWebhookHmac (computed with its code)."""
    body = b'{"time_ms":1,"events":[]}'
    assert signature_of(SECRET, body) == hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert signature_of(SECRET, body) == (
        "786f49f91684a7686ab05b497c091b2a12e239335563fbc11198764aee85265e"
    )


def test_a_genuine_webhook_is_parsed() -> None:
    """A correctly signed, fresh body yields its time and (name, channel) pairs."""
    webhook = _verify(_body(NOW_MS, ("channel_vacated", "private-seller-s1")))
    assert webhook == Webhook(NOW_MS, (("channel_vacated", "private-seller-s1"),))


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        (KEY, "0" * 64),
        (KEY, ""),
        (KEY, "é" * 64),
        ("other-key", None),  # None: the right signature
        ("", None),
    ],
)
def test_bad_keys_and_signatures_are_forged(key: str, signature: str | None) -> None:
    """A wrong or missing key or signature is refused as forged (401) before reading the body."""
    with pytest.raises(Rejected) as caught:
        _verify(b"not even json", key, signature)
    assert (caught.value.outcome, caught.value.status) == ("forged", 401)


def test_a_signature_of_another_body_is_forged() -> None:
    """A signature copied from one body does not authenticate an edited body."""
    original, edited = _body(NOW_MS), _body(NOW_MS, ("channel_occupied", "private-user-8"))
    with pytest.raises(Rejected) as caught:
        _verify(edited, KEY, signature_of(SECRET, original))
    assert caught.value.outcome == "forged"


@pytest.mark.parametrize(
    ("time_ms", "accepted"),
    [
        (NOW_MS, True),
        (NOW_MS - MAX_AGE_MS, True),
        (NOW_MS - MAX_AGE_MS - 1, False),
        (NOW_MS - 3_600_000, False),
        (NOW_MS + 60_000, True),
        (NOW_MS + 60_001, False),
    ],
)
def test_time_ms_window(time_ms: int, accepted: bool) -> None:
    """time_ms up to 5 minutes old or 1 minute ahead is accepted; outside that, stale with 401."""
    if accepted:
        assert _verify(_body(time_ms)).time_ms == time_ms
        return
    with pytest.raises(Rejected) as caught:
        _verify(_body(time_ms))
    assert (caught.value.outcome, caught.value.status) == ("stale", 401)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"events": []}',
        b'{"time_ms": "1800000000000", "events": []}',
        b'{"time_ms": true, "events": []}',
        b'{"time_ms": 1800000000000, "events": {}}',
        b'{"time_ms": 1800000000000, "events": [1]}',
    ],
)
def test_signed_but_malformed_bodies_are_invalid(body: bytes) -> None:
    """A correctly signed body that is not Soketi's shape is refused as invalid with 400."""
    with pytest.raises(Rejected) as caught:
        _verify(body)
    assert (caught.value.outcome, caught.value.status) == ("invalid", 400)


@pytest.mark.parametrize(
    ("channel", "subject"),
    [
        ("private-user-7", PersonalAccount("user", "7")),
        (
            "private-user-65a1f0c2e4b0a1b2c3d4e5f6",
            PersonalAccount("user", "65a1f0c2e4b0a1b2c3d4e5f6"),
        ),
        ("private-seller-s_1-x", PersonalAccount("seller", "s_1-x")),
        ("private-user-", None),
        ("private-user-7,private-admin", None),
        ("private-user-7 ", None),
        ("private-user-7\n", None),
        ("private-admin", None),
        ("private-chat-c1", None),
        ("private-order-o1", None),
        ("user-7", None),
        ("presence-user-7", None),
        ("private-user-" + "a" * 65, None),
        ("private-users-7", None),
    ],
)
def test_personal_channels_are_parsed_exactly(
    channel: str, subject: PersonalAccount | None
) -> None:
    """Only private-user-{id} and private-seller-{id} with a contract id are personal channels."""
    assert subject_of(channel) == subject
    if subject is not None:
        assert subject_of_key(subject.key) == subject


def test_changes_keep_order_and_skip_other_events() -> None:
    """Occupied/vacated of personal channels become changes in order; everything else is ignored."""
    webhook = Webhook(
        NOW_MS,
        (
            ("channel_occupied", "private-user-7"),
            ("channel_occupied", "private-admin"),
            ("member_added", "private-user-8"),
            ("channel_vacated", "private-seller-s1"),
        ),
    )
    assert changes_of(webhook) == [
        Change(PersonalAccount("user", "7"), True, AT),
        Change(PersonalAccount("seller", "s1"), False, AT),
    ]


def _state(key: str, online: bool, age_s: float) -> PresenceState:
    return PresenceState(key, online, AT - timedelta(seconds=age_s))


@pytest.mark.parametrize(
    ("occupied", "stored", "expected"),
    [
        pytest.param(set(), {}, [], id="nothing"),
        pytest.param({"private-user-1"}, {}, [("user:1", True)], id="unknown occupied: online"),
        pytest.param(
            {"private-user-1"}, {"user:1": _state("user:1", True, 30)}, [], id="agrees: online"
        ),
        pytest.param(
            {"private-user-1"},
            {"user:1": _state("user:1", False, 30)},
            [("user:1", True)],
            id="lost occupied",
        ),
        pytest.param(
            set(), {"user:1": _state("user:1", True, 30)}, [("user:1", False)], id="lost vacated"
        ),
        pytest.param(
            set(), {"seller:s": _state("seller:s", True, -1)}, [], id="changed after the snapshot"
        ),
        pytest.param(
            {"private-user-1"},
            {"user:1": _state("user:1", False, 0)},
            [],
            id="changed at the snapshot",
        ),
        pytest.param({"private-admin", "private-user-bad,id"}, {}, [], id="not personal channels"),
    ],
)
def test_drift(
    occupied: set[str], stored: dict[str, PresenceState], expected: list[tuple[str, bool]]
) -> None:
    """Reconciliation changes exactly what disagrees with Soketi and is older than the snapshot."""
    assert [(c.subject.key, c.online) for c in drift(occupied, stored, at=AT)] == expected
    assert all(c.at == AT for c in drift(occupied, stored, at=AT))


def test_event_ids_name_the_state_they_replace() -> None:
    """The same change from the same state has one id; another previous state gives another id."""
    change = Change(PersonalAccount("seller", "s1"), False, AT)
    previous = _state("seller:s1", True, 30)
    event = event_of(change, previous)
    assert event.type == "presence.offline"
    assert event.data.subject_id == "s1"
    assert event.data.subject_type == "seller"
    assert event.occurred_at == AT
    later = Change(change.subject, False, AT + timedelta(seconds=5))
    assert event_of(later, previous).id == event.id
    assert event_of(change, _state("seller:s1", True, 60)).id != event.id
    assert event_of(Change(change.subject, True, AT), previous).id != event.id
    assert event_of(change, None).id != event.id


def test_replay_guard_refuses_a_body_seen_within_the_window() -> None:
    """The same signature is accepted once, and forgotten once it could only be stale anyway."""
    guard = ReplayGuard()
    assert guard.first_time("sig", NOW_MS, NOW_MS)
    assert not guard.first_time("sig", NOW_MS, NOW_MS + 1000)
    assert guard.first_time("other", NOW_MS, NOW_MS + 1000)
    assert guard.first_time("sig", NOW_MS, NOW_MS + MAX_AGE_MS + 1)


def test_event_rates_count_the_last_minute() -> None:
    """Rates are the increase of each total within the last 60 s, from process start at first."""
    rates = EventRates(started_s=0)
    assert rates.observe(5, {"order.created": 3}) == {"order.created": 3}
    assert rates.observe(30, {"order.created": 5, "user.registered": 1}) == {
        "order.created": 5,
        "user.registered": 1,
    }
    # At t=66 the start (t=0) and t=5 samples left the window; t=30 is the baseline.
    assert rates.observe(66, {"order.created": 9, "user.registered": 1}) == {"order.created": 4}
    assert rates.observe(200, {"order.created": 9, "user.registered": 1}) == {}


def _report(
    instance: str, age_s: float, per_minute: dict[str, int], dlq: int | None
) -> WorkerReport:
    return WorkerReport(instance, AT - timedelta(seconds=age_s), per_minute, dlq)


def test_fleet_figures_sum_every_fresh_report() -> None:
    """Rates add up across workers, the newest DLQ sample wins, and online splits by type."""
    reports = [
        _report("a", 2, {"order.created": 3, "user.registered": 1}, 4),
        _report("b", 1, {"order.created": 2}, None),
        _report("c", 0, {"message.created": 0}, 5),
    ]
    payload = fleet_payload(reports, {"user": 7, "seller": 2}, NOW_MS)
    assert payload == {
        "accountsOnline": 9,
        "customersOnline": 7,
        "sellersOnline": 2,
        "eventsPerMinute": {"order.created": 5, "user.registered": 1},
        "dlqDepth": 5,
        "workers": 3,
        "timestamp": NOW_MS,
    }


def test_fleet_figures_before_any_sample() -> None:
    """No report sampled the DLQ yet: dlqDepth is null; nobody online: zeros."""
    payload = fleet_payload([_report("a", 0, {}, None)], {}, NOW_MS)
    assert payload["dlqDepth"] is None
    assert (payload["accountsOnline"], payload["customersOnline"], payload["sellersOnline"]) == (
        0,
        0,
        0,
    )
    assert payload["eventsPerMinute"] == {}
    assert payload["workers"] == 1
