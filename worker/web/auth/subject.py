"""Who is calling, whichever way it is found out: the ``Subject``, the ``Authenticator``
protocol both modes implement, and the two ways of failing.

::

    Authenticator.subjects(request) -> (Subject, ...)     most preferred first, never empty
        raises Unauthenticated   401: no credentials, or they name nobody we accept
        raises AuthUnavailable   503: the backend that knows could not answer (forward mode)

Reasons are short machine codes, safe to show the caller; they never quote a credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from aiohttp import web

from schemas.base import ID_PATTERN

Role = Literal["user", "seller", "admin"]
ROLES: Final = frozenset({"user", "seller", "admin"})
#: The default role mapping: the contract's three roles, spelled as the contract spells them.
IDENTITY_ROLES: Final[Mapping[str, Role]] = {"user": "user", "seller": "seller", "admin": "admin"}

_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Subject:
    """The caller: an account id (a shop's ``_id`` for a seller) and its role."""

    id: str
    role: Role


class Unauthenticated(Exception):
    """No valid credentials (401); ``reason`` is a short machine code safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthUnavailable(Exception):
    """Whether the caller is signed in cannot be known now (503); ``reason`` as above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator(Protocol):
    """One way of finding out who calls (``jwt`` or ``forward``); the guard does not care which."""

    async def subjects(self, request: web.Request) -> tuple[Subject, ...]:
        """Every subject the request's credentials prove, most preferred first (never empty)."""
        ...


def subject_of(account_id: object, role: object, roles: Mapping[str, Role]) -> Subject:
    """A subject from an id and a backend role name, or raise ``Unauthenticated``.

    The id must be a string a channel name may carry (``schemas.base.ID_PATTERN``), and the
    role a name ``roles`` maps.
    """
    if not isinstance(account_id, str) or _ID.fullmatch(account_id) is None:
        raise Unauthenticated("invalid_subject")
    if not isinstance(role, str) or role not in roles:
        raise Unauthenticated("invalid_role")
    return Subject(id=account_id, role=roles[role])
