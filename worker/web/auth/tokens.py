"""Who is calling: the subject of an HS256 JWT (contract section 5), or ``Unauthenticated``.

Only HS256 is accepted, so ``alg: none`` and RS256/HS256 key confusion are refused before
any claim is read; ``exp``, ``sub`` and ``role`` are required; ``sub`` must be an id a
channel name may carry. Reasons are short machine codes and never quote the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

import jwt

from schemas.base import ID_PATTERN

Role = Literal["user", "seller", "admin"]
ROLES: Final = frozenset({"user", "seller", "admin"})
ALGORITHMS: Final = ("HS256",)
LEEWAY_S: Final = 10.0
#: Longer tokens are refused unread: a real one is a few hundred bytes.
MAX_TOKEN_CHARS: Final = 4096

_ID = re.compile(ID_PATTERN)
_REQUIRED: Final = ["exp", "sub", "role"]


@dataclass(frozen=True, slots=True)
class Subject:
    """The caller: an account id (a shop's ``_id`` for a seller) and its role."""

    id: str
    role: Role


class Unauthenticated(Exception):
    """No valid token; ``reason`` is a short machine code safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Most specific first: several of these subclass each other.
_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid"),
    (jwt.exceptions.InvalidSubjectError, "invalid_subject"),
    (jwt.InvalidIssuedAtError, "malformed_token"),
    (jwt.DecodeError, "malformed_token"),
)


def verify_token(token: str, secret: str) -> Subject:
    """The subject of ``token`` signed with ``secret`` (HS256), or raise ``Unauthenticated``.

    ``exp``, ``nbf`` and ``iat`` get ``LEEWAY_S`` of tolerance for clock skew.
    """
    if not token:
        raise Unauthenticated("missing_token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("token_too_long")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=list(ALGORITHMS),
            leeway=LEEWAY_S,
            # No audience is configured: the secret is shared only with the backend.
            options={"require": _REQUIRED, "verify_aud": False},
        )
    except jwt.PyJWTError as error:
        raise Unauthenticated(_reason(error)) from None
    return _subject(claims)


def _reason(error: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid_token"


def _subject(claims: Mapping[str, object]) -> Subject:
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or _ID.fullmatch(sub) is None:
        raise Unauthenticated("invalid_subject")
    if not isinstance(role, str) or role not in ROLES:
        raise Unauthenticated("invalid_role")
    return Subject(id=sub, role=cast(Role, role))
