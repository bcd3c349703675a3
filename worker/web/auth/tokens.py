"""Who is calling: the subject of an HS256 JWT (contract section 5), or ``Unauthenticated``.

Only HS256 is accepted, so ``alg: none`` and RS256/HS256 key confusion are refused before
any claim is read. The id and role claims are required (``sub`` and ``role`` unless
``JwtRules`` names others); the id must be an id a channel name may carry; the role is
read through the role mapping. ``exp`` is required unless ``JwtRules.max_age_s`` is set:
then a token without ``exp`` is accepted while its ``iat`` is that recent. Reasons are short
machine codes and never quote the token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import jwt

from worker.web.auth.subject import (
    IDENTITY_ROLES,
    ROLES,
    Role,
    Subject,
    Unauthenticated,
    subject_of,
)

__all__ = ["ROLES", "JwtRules", "Role", "Subject", "Unauthenticated", "verify_token"]

ALGORITHMS: Final = ("HS256",)
LEEWAY_S: Final = 10.0
#: Longer tokens are refused unread: a real one is a few hundred bytes.
MAX_TOKEN_CHARS: Final = 4096


@dataclass(frozen=True, slots=True)
class JwtRules:
    """How to read a token's claims: which names, which roles, how old without ``exp``."""

    id_claim: str = "sub"
    role_claim: str = "role"
    roles: Mapping[str, Role] = field(default_factory=lambda: dict(IDENTITY_ROLES))
    #: ``None``: ``exp`` is required. Else a token without ``exp`` lives this long after ``iat``.
    max_age_s: float | None = None

    def required(self) -> list[str]:
        """The claims a token must carry."""
        claims = [self.id_claim, self.role_claim]
        return claims if self.max_age_s is not None else [*claims, "exp"]


DEFAULT_RULES: Final = JwtRules()

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


def verify_token(token: str, secret: str, rules: JwtRules = DEFAULT_RULES) -> Subject:
    """The subject of ``token`` signed with ``secret`` (HS256), or raise ``Unauthenticated``.

    ``exp``, ``nbf`` and ``iat`` get ``LEEWAY_S`` of tolerance for clock skew.
    """
    if not token:
        raise Unauthenticated("missing_token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("token_too_long")
    if not token.isascii():  # a JWT is base64url and dots; other bytes would not even encode
        raise Unauthenticated("malformed_token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=list(ALGORITHMS),
            leeway=LEEWAY_S,
            # No audience is configured: the secret is shared only with the backend.
            options={"require": rules.required(), "verify_aud": False},
        )
    except jwt.PyJWTError as error:
        raise Unauthenticated(_reason(error)) from None
    if "exp" not in claims and rules.max_age_s is not None:
        _check_age(claims.get("iat"), rules.max_age_s)
    return subject_of(claims.get(rules.id_claim), claims.get(rules.role_claim), rules.roles)


def _check_age(issued_at: object, max_age_s: float) -> None:
    """A token without ``exp`` must say when it was issued, no longer than ``max_age_s`` ago."""
    if issued_at is None:
        raise Unauthenticated("missing_claim")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int | float):
        raise Unauthenticated("malformed_token")
    if time.time() - issued_at > max_age_s + LEEWAY_S:
        raise Unauthenticated("token_expired")


def _reason(error: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid_token"
