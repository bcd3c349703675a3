"""``ChannelGuard``: who calls (through an ``Authenticator``) and whether they may read a channel.

The subscription endpoints, the history endpoint and the console's admin API all ask it,
so a channel is authorized alike everywhere, whichever ``AUTH_MODE`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from handlers.channels import parse_channel
from worker.errors import StoreUnavailable
from worker.web.auth.policy import AccessLookups, Decision, decide, load_facts
from worker.web.auth.subject import Authenticator, AuthUnavailable, Subject, Unauthenticated


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one request for a channel was answered: HTTP status, reason, and who asked."""

    status: int
    reason: str
    subject: Subject | None = None

    @property
    def outcome(self) -> str:
        """The metric's ``outcome`` label for this verdict."""
        return _OUTCOMES.get(self.status, "unavailable")


_OUTCOMES: Final = {
    200: "allowed",
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    408: "invalid",  # the body came too slowly: a client fault like a malformed one
}


class ChannelGuard:
    """Authenticates a request and decides a channel for it."""

    def __init__(self, authenticator: Authenticator, lookups: AccessLookups) -> None:
        self._authenticator = authenticator
        self._lookups = lookups

    async def subjects(self, request: web.Request) -> tuple[Subject, ...]:
        """The callers of ``request``, or raise ``Unauthenticated`` / ``AuthUnavailable``."""
        return await self._authenticator.subjects(request)

    async def identify(self, request: web.Request) -> Subject | Verdict:
        """The preferred caller of ``request``, or the 401/503 verdict saying why not."""
        try:
            return (await self.subjects(request))[0]
        except Unauthenticated as error:
            return Verdict(401, error.reason)
        except AuthUnavailable as error:
            return Verdict(503, error.reason)

    async def check(self, request: web.Request, channel: str) -> Verdict:
        """200, 401, 403 or 503 (a backend down) for ``channel`` asked by ``request``'s caller.

        With several subjects (jwt mode, several cookies) the first one allowed decides.
        """
        try:
            subjects = await self.subjects(request)
        except Unauthenticated as error:
            return Verdict(401, error.reason)
        except AuthUnavailable as error:
            return Verdict(503, error.reason)
        try:
            facts = await load_facts(parse_channel(channel), self._lookups)
        except StoreUnavailable:
            return Verdict(503, "store_unavailable", subjects[0])
        decisions: list[tuple[Subject, Decision]] = [
            (subject, decide(subject, channel, facts)) for subject in subjects
        ]
        subject, decision = next((found for found in decisions if found[1].allowed), decisions[0])
        return Verdict(200 if decision.allowed else 403, decision.reason, subject)
