"""Merged acks: one ``multiple`` ack only over a run of finished deliveries, never past one
still open (``worker.flow.acks``)."""

from __future__ import annotations

from dataclasses import dataclass

from aiormq.exceptions import ChannelInvalidStateError

from worker.flow.acks import OpenTags
from worker.flow.settle import channel_closed


@dataclass(frozen=True)
class Msg:
    channel: str
    delivery_tag: int


def _open(*messages: Msg) -> OpenTags:
    tags = OpenTags()
    for message in messages:
        tags.add(message)
    return tags


def test_a_run_from_the_oldest_open_tag_is_one_ack_on_its_last() -> None:
    a, b, c = Msg("ch", 1), Msg("ch", 2), Msg("ch", 3)
    runs, rest = _open(a, b, c).plan([c, a, b])
    assert runs == [(c, [a, b, c])] and rest == []


def test_a_run_stops_before_a_delivery_still_open() -> None:
    a, b, c, d = (Msg("ch", n) for n in (1, 2, 3, 4))
    tags = _open(a, b, c, d)  # c is still being worked on
    runs, rest = tags.plan([a, b, d])
    assert runs == [(b, [a, b])] and rest == [d]


def test_an_open_delivery_below_all_of_them_means_no_run() -> None:
    a, b, c = Msg("ch", 1), Msg("ch", 2), Msg("ch", 3)
    runs, rest = _open(a, b, c).plan([b, c])
    assert runs == [] and sorted(m.delivery_tag for m in rest) == [2, 3]


def test_finished_deliveries_leave_the_way_free() -> None:
    a, b, c = Msg("ch", 1), Msg("ch", 2), Msg("ch", 3)
    tags = _open(a, b, c)
    tags.discard(a)  # settled on its own (a retry, say)
    runs, rest = tags.plan([b, c])
    assert runs == [(c, [b, c])] and rest == []


def test_channels_are_apart_and_a_run_of_one_is_a_plain_ack() -> None:
    a1, a2, b1 = Msg("a", 1), Msg("a", 2), Msg("b", 1)
    runs, rest = _open(a1, a2, b1).plan([a1, a2, b1])
    assert runs == [(a2, [a1, a2])] and rest == [b1]


def test_a_message_without_tag_or_channel_is_acked_on_its_own() -> None:
    tags = OpenTags()
    stand_in = object()
    tags.add(stand_in)
    assert tags.plan([stand_in]) == ([], [stand_in])


class ClosedChannelMessage:
    """aio-pika's message once its channel is closed: reading ``channel`` raises."""

    delivery_tag = 7

    @property
    def channel(self) -> object:
        raise ChannelInvalidStateError("channel closed")


def test_a_message_whose_channel_is_gone_counts_as_closed_and_is_acked_alone() -> None:
    """Reading a closed channel raises in aio-pika; neither check may raise with it (a raise
    in the middle of a batch's settling once left the rest of the batch unsettled)."""
    message = ClosedChannelMessage()
    assert channel_closed(message)  # type: ignore[arg-type]
    tags = OpenTags()
    tags.add(message)
    assert tags.plan([message]) == ([], [message])
    tags.discard(message)
