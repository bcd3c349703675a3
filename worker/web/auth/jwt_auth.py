"""``AUTH_MODE=jwt``: the caller proves who they are with the backend's HS256 token.

The token comes from an ``Authorization: Bearer`` header or, without one, from the cookies
``AUTH_COOKIE_NAME`` lists. A header decides alone (a bad header is refused, never bypassed
by a cookie). Every listed cookie is tried, in order: each one holding a valid token adds
its subject (someone signed in as a customer and as a seller holds both), and when none
does, the first cookie's refusal is the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import web

from worker.web.auth.subject import Subject, Unauthenticated
from worker.web.auth.tokens import JwtRules, verify_token


class JwtAuthenticator:
    """Verifies the token of a request with one secret and one set of claim rules."""

    def __init__(self, secret: str, rules: JwtRules, cookie_names: Sequence[str] = ()) -> None:
        self._secret = secret
        self._rules = rules
        self._cookie_names = tuple(cookie_names)

    async def subjects(self, request: web.Request) -> tuple[Subject, ...]:
        """The subjects of the request's token(s), or raise ``Unauthenticated``."""
        return self.subjects_of(request.headers.get("Authorization"), request.cookies)

    def subjects_of(
        self, authorization: str | None, cookies: Mapping[str, str]
    ) -> tuple[Subject, ...]:
        """The subjects an ``Authorization`` header, else the cookies, prove (pure)."""
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("malformed_authorization")
            return (verify_token(token.strip(), self._secret, self._rules),)
        found: list[Subject] = []
        refusal: Unauthenticated | None = None
        for name in self._cookie_names:
            token = cookies.get(name, "")
            if not token:
                continue
            try:
                subject = verify_token(token, self._secret, self._rules)
            except Unauthenticated as error:
                refusal = refusal or error
                continue
            if subject not in found:
                found.append(subject)
        if found:
            return tuple(found)
        raise refusal or Unauthenticated("missing_token")
