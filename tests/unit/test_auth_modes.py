"""The two authorization modes as tables: jwt claim rules and cookies, forward answers, the
answer cache, CORS headers, and the settings that configure them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import orjson
import pytest
from pydantic import ValidationError

from worker.config import Settings
from worker.web.auth.cache import SubjectCache
from worker.web.auth.forward import ForwardRules, credentials_of, path_of, subject_of_answer
from worker.web.auth.jwt_auth import JwtAuthenticator
from worker.web.auth.subject import AuthUnavailable, Subject, Unauthenticated
from worker.web.auth.tokens import JwtRules, verify_token
from worker.web.cors import CorsPolicy

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4
OID = "65f0c0ffee0123456789abcd"
OLD_BACKEND = {"user": "user", "seller": "seller", "Admin": "admin", "superadmin": "admin"}


def mint(secret: str = SECRET, **claims: Any) -> str:
    """An HS256 token: ``sub`` u1, ``role`` user, ``exp`` in ten minutes unless ``claims``
    change them (``None`` leaves a claim out)."""
    body = {"sub": "u1", "role": "user", "exp": int(time.time()) + 600} | claims
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def ago(seconds: int) -> int:
    """A timestamp ``seconds`` in the past (negative: in the future)."""
    return int(time.time()) - seconds


# --- jwt: claim names, role mapping, max age ----------------------------------------------

ID = JwtRules(id_claim="id")
ROLE = JwtRules(role_claim="userType")
MAPPED = JwtRules(roles=OLD_BACKEND)
AGE = JwtRules(max_age_s=3600)
OLD = JwtRules(id_claim="id", roles=OLD_BACKEND, max_age_s=3600)
P = pytest.param

ACCEPTED = [
    P(JwtRules(), mint(sub=OID), Subject(OID, "user"), id="defaults"),
    P(ID, mint(sub=None, id=OID, role="seller"), Subject(OID, "seller"), id="id claim named id"),
    P(ROLE, mint(role=None, userType="admin"), Subject("u1", "admin"), id="role claim userType"),
    P(MAPPED, mint(role="Admin"), Subject("u1", "admin"), id="Admin mapped to admin"),
    P(MAPPED, mint(role="superadmin"), Subject("u1", "admin"), id="superadmin mapped to admin"),
    P(AGE, mint(exp=None, iat=ago(60)), Subject("u1", "user"), id="no exp, iat a minute ago"),
    P(AGE, mint(iat=ago(7200)), Subject("u1", "user"), id="exp present: exp decides"),
    P(OLD, mint(sub=None, id=OID, role="Admin", exp=None, iat=ago(0)), Subject(OID, "admin"),
      id="old-style token"),
]  # fmt: skip

REFUSED = [
    P(ID, mint(sub=OID), "missing_claim", id="id claim named id, token has only sub"),
    P(ID, mint(id=12), "invalid_subject", id="id claim numeric"),
    P(ID, mint(id="1,2"), "invalid_subject", id="id claim with a comma"),
    P(ROLE, mint(role="admin"), "missing_claim", id="role claim renamed, token has role"),
    P(JwtRules(), mint(role="Admin"), "invalid_role", id="Admin without a mapping"),
    P(MAPPED, mint(role="admin"), "invalid_role", id="admin not in a custom mapping"),
    P(MAPPED, mint(role=["Admin"]), "invalid_role", id="role as a list"),
    P(JwtRules(), mint(exp=None, iat=ago(0)), "missing_claim", id="no exp and no max age"),
    P(AGE, mint(exp=None), "missing_claim", id="no exp, no iat"),
    P(AGE, mint(exp=None, iat=ago(7200)), "token_expired", id="no exp, iat two hours ago"),
    P(AGE, mint(exp=None, iat="yesterday"), "malformed_token", id="no exp, iat not a number"),
    P(AGE, mint(exp=None, iat=ago(-600)), "token_not_yet_valid", id="no exp, iat in the future"),
    P(AGE, mint(exp=ago(60), iat=ago(0)), "token_expired", id="exp past, max age set"),
]


@pytest.mark.parametrize(("rules", "token", "subject"), ACCEPTED)
def test_jwt_rules_accept(rules: JwtRules, token: str, subject: Subject) -> None:
    """Each configured claim name, mapping and max age reads its token as the right subject."""
    assert verify_token(token, SECRET, rules) == subject


@pytest.mark.parametrize(("rules", "token", "reason"), REFUSED)
def test_jwt_rules_refuse(rules: JwtRules, token: str, reason: str) -> None:
    """A token the configured rules do not cover is refused with its reason."""
    with pytest.raises(Unauthenticated) as caught:
        verify_token(token, SECRET, rules)
    assert caught.value.reason == reason


# --- jwt: where the token comes from ------------------------------------------------------

USER, SELLER = mint(), mint(sub="s1", role="seller")
FORGED, EXPIRED = mint(secret="f" * 64, role="admin"), mint(exp=ago(60))
U1, S1 = Subject("u1", "user"), Subject("s1", "seller")
TWO_COOKIES = JwtAuthenticator(SECRET, JwtRules(), ("token", "seller_token"))

SOURCES = [
    P(None, {"token": USER}, (U1,), id="the first cookie"),
    P(None, {"seller_token": SELLER}, (S1,), id="the second cookie alone"),
    P(None, {"token": USER, "seller_token": SELLER}, (U1, S1), id="both: both, in order"),
    P(None, {"token": EXPIRED, "seller_token": SELLER}, (S1,), id="a bad first, a good second"),
    P(None, {"token": EXPIRED, "seller_token": FORGED}, "token_expired", id="all bad: first"),
    P(None, {"admin_token": mint(role="admin")}, "missing_token", id="an unlisted cookie"),
    P(None, {"token": ""}, "missing_token", id="an empty cookie is no cookie"),
    P(None, {}, "missing_token", id="nothing at all"),
    P(f"Bearer {SELLER}", {"token": USER}, (S1,), id="a header decides alone"),
    P(f"Bearer {FORGED}", {"token": USER}, "bad_signature", id="a forged header, a good cookie"),
    P("Basic YWRtaW46YWRtaW4=", {"token": USER}, "malformed_authorization", id="Basic"),
    P("Bearer ", {"token": USER}, "malformed_authorization", id="an empty Bearer"),
]


@pytest.mark.parametrize(("authorization", "cookies", "expected"), SOURCES)
def test_jwt_tokens_from_a_header_or_each_cookie(
    authorization: str | None, cookies: dict[str, str], expected: tuple[Subject, ...] | str
) -> None:
    """A header decides alone; otherwise every listed cookie is tried and each valid one counts."""
    if isinstance(expected, str):
        with pytest.raises(Unauthenticated) as caught:
            TWO_COOKIES.subjects_of(authorization, cookies)
        assert caught.value.reason == expected
    else:
        assert TWO_COOKIES.subjects_of(authorization, cookies) == expected


# --- forward: what is forwarded, how the answer reads ----------------------------------------

RULES = ForwardRules(url="http://backend/api/auth/me", roles=OLD_BACKEND | {"admin": "admin"})


def me(user_type: Any, account_id: Any = OID) -> bytes:
    """A body shaped like the backend's ``GET /api/auth/me``."""
    user = {"_id": account_id, "name": "Aarav"}
    return orjson.dumps({"success": True, "user": user, "userType": user_type})


ANSWERS = [
    P(200, me("user"), Subject(OID, "user"), id="a customer"),
    P(200, me("seller"), Subject(OID, "seller"), id="a seller"),
    P(200, me("admin"), Subject(OID, "admin"), id="an admin"),
    P(201, me("user"), Subject(OID, "user"), id="201 is an answer too"),
    P(
        401,
        b'{"success":false,"message":"Not authenticated"}',
        "401:not_signed_in",
        id="not signed in",
    ),
    P(403, b"", "401:not_signed_in", id="forbidden"),
    P(200, me("seller_as_customer"), "401:invalid_role", id="an unknown role"),
    P(200, b'{"user": {"_id": "u1"}}', "401:invalid_role", id="no role"),
    P(200, b'{"user": {}, "userType": "user"}', "401:invalid_subject", id="no id"),
    P(
        200,
        b'{"user": "u1", "userType": "user"}',
        "401:invalid_subject",
        id="user is not an object",
    ),
    P(200, me("user", 12), "401:invalid_subject", id="numeric id"),
    P(200, me("user", "u1,private-admin"), "401:invalid_subject", id="id with a comma"),
    P(500, b"oops", "503:auth_backend_error", id="server error"),
    P(404, me("user"), "503:auth_backend_error", id="not found"),
    P(302, b"", "503:auth_backend_error", id="a redirect to a login page"),
    P(200, b"<html>sign in</html>", "503:auth_backend_invalid", id="HTML"),
    P(200, b"[]", "503:auth_backend_invalid", id="a JSON list"),
    P(200, b"", "503:auth_backend_invalid", id="empty"),
]


@pytest.mark.parametrize(("status", "body", "expected"), ANSWERS)
def test_forward_answers_read(status: int, body: bytes, expected: Subject | str) -> None:
    """The backend's answer is a subject, a 401 (signed out, unusable id or role) or a 503."""
    if isinstance(expected, Subject):
        assert subject_of_answer(status, body, RULES) == expected
        return
    kind = Unauthenticated if expected.startswith("401") else AuthUnavailable
    with pytest.raises(kind) as caught:
        subject_of_answer(status, body, RULES)
    assert caught.value.reason == expected.split(":")[1]


def test_forward_paths_are_dotted() -> None:
    """``AUTH_FORWARD_ID_PATH`` and ``..._ROLE_PATH`` are dotted paths into the JSON answer."""
    rules = ForwardRules(url="http://b", id_path=path_of("data.account.id"), role_path=("kind",))
    body = b'{"data": {"account": {"id": "x1"}}, "kind": "seller"}'
    assert (path_of("user._id"), path_of("userType")) == (("user", "_id"), ("userType",))
    assert subject_of_answer(200, body, rules) == Subject("x1", "seller")


SID = "connect.sid=s%3Aa.b"
ONLY_SID = frozenset({"connect.sid"})
BROWSER = {"Cookie": f"{SID}; _ga=1", "Authorization": "Bearer t", "Origin": "https://x", "X": "1"}
FORWARDED = [
    P(BROWSER, frozenset(), {"Cookie": f"{SID}; _ga=1", "Authorization": "Bearer t"},
      id="cookie and authorization"),
    P({"Cookie": f"_ga=1; {SID}; theme=dark"}, ONLY_SID, {"Cookie": SID}, id="only listed cookies"),
    P({"Cookie": "_ga=1"}, ONLY_SID, {}, id="listed cookie absent"),
    P({"User-Agent": "x", "Referer": "https://x"}, frozenset(), {}, id="nothing"),
    P({"Cookie": " ", "Authorization": ""}, frozenset(), {}, id="blank values"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "names", "expected"), FORWARDED)
def test_forward_sends_only_cookie_and_authorization(
    headers: dict[str, str], names: frozenset[str], expected: dict[str, str]
) -> None:
    """Only ``Cookie`` (filtered when names are configured) and ``Authorization`` go along."""
    assert credentials_of(headers, names) == expected


# --- the answer cache ---------------------------------------------------------------------


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """A ``load`` that counts its calls and answers what it is told."""

    def __init__(self, answer: Subject | Exception) -> None:
        self.answer = answer
        self.calls = 0

    async def load(self) -> Subject:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


ALICE = Subject("alice", "user")


async def test_cache_keeps_an_answer_for_its_ttl_only() -> None:
    """Within the TTL the backend is asked once; after it, again."""
    clock, backend = Clock(), Backend(ALICE)
    cache = SubjectCache(10, 100, clock=clock)
    assert [await cache.get(b"k", backend.load) for _ in range(3)] == [ALICE] * 3
    clock.now += 9.9
    await cache.get(b"k", backend.load)
    assert backend.calls == 1
    clock.now += 0.1
    await cache.get(b"k", backend.load)
    assert backend.calls == 2


async def test_cache_ttl_counts_from_when_the_question_was_asked() -> None:
    """A slow answer expires ``ttl_s`` after the question, not after the answer."""
    clock, asked, gate = Clock(), asyncio.Event(), asyncio.Event()

    async def slow() -> Subject:
        asked.set()
        await gate.wait()
        return ALICE

    cache = SubjectCache(10, 100, clock=clock)
    pending = asyncio.create_task(cache.get(b"k", slow))
    await asyncio.wait_for(asked.wait(), 5)
    clock.now += 8
    gate.set()
    assert await pending == ALICE
    clock.now += 2
    assert cache.cached(b"k") is None


async def test_cache_never_keeps_a_refusal_and_a_refusal_drops_the_entry() -> None:
    """A 401 is asked again every time, and after one nothing cached says "signed in"."""
    clock = Clock()
    cache = SubjectCache(10, 100, clock=clock)
    refusing = Backend(Unauthenticated("not_signed_in"))
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await cache.get(b"k", refusing.load)
    assert refusing.calls == 2
    await cache.get(b"k", Backend(ALICE).load)
    clock.now += 10
    with pytest.raises(Unauthenticated):
        await cache.get(b"k", refusing.load)
    assert cache.cached(b"k") is None
    unavailable = Backend(AuthUnavailable("auth_unreachable"))
    with pytest.raises(AuthUnavailable):
        await cache.get(b"k", unavailable.load)
    assert len(cache) == 0


async def test_cache_shares_one_call_among_concurrent_questions() -> None:
    """Five questions about one session at once make one backend call."""
    asked, gate, calls = asyncio.Event(), asyncio.Event(), []

    async def load() -> Subject:
        calls.append(1)
        asked.set()
        await gate.wait()
        return ALICE

    cache = SubjectCache(10, 100)
    waiting = [asyncio.create_task(cache.get(b"k", load)) for _ in range(5)]
    await asyncio.wait_for(asked.wait(), 5)
    gate.set()
    assert await asyncio.gather(*waiting) == [ALICE] * 5
    assert len(calls) == 1


async def test_cache_is_bounded_least_recently_used_first() -> None:
    """Past ``max_entries`` the least recently used key goes."""
    cache = SubjectCache(10, 2, clock=Clock())
    for key in (b"a", b"b"):
        await cache.get(key, Backend(ALICE).load)
    assert cache.cached(b"a") == ALICE  # a is now the most recent
    await cache.get(b"c", Backend(ALICE).load)
    assert (cache.cached(b"a"), cache.cached(b"b"), cache.cached(b"c")) == (ALICE, None, ALICE)


async def test_cache_with_ttl_zero_keeps_nothing() -> None:
    """``AUTH_FORWARD_CACHE_TTL_S=0`` asks the backend every time."""
    backend = Backend(ALICE)
    cache = SubjectCache(0, 100)
    for _ in range(3):
        await cache.get(b"k", backend.load)
    assert (backend.calls, len(cache)) == (3, 0)


# --- CORS ---------------------------------------------------------------------------------

CORS = CorsPolicy(frozenset({"https://shop.example.com", "http://127.0.0.1:3000"}), 600)
ALLOWED = {
    "Access-Control-Allow-Origin": "https://shop.example.com",
    "Access-Control-Allow-Credentials": "true",
}


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://shop.example.com", ALLOWED),
        ("https://evil.example.com", {}),
        ("https://shop.example.com.evil.com", {}),
        ("http://shop.example.com", {}),
        ("https://SHOP.example.com", {}),
        ("null", {}),
        (None, {}),
    ],
)
def test_cors_answers_only_listed_origins(origin: str | None, expected: dict[str, str]) -> None:
    """Exactly a listed origin gets itself and credentials back; anything else nothing."""
    assert CORS.answer_headers(origin) == expected


def test_cors_preflight_lists_methods_headers_and_max_age() -> None:
    """A listed origin's preflight names the route's methods, the two headers and the max age."""
    assert CORS.preflight_headers("https://shop.example.com", {"POST", "OPTIONS"}) == ALLOWED | {
        "Access-Control-Allow-Methods": "OPTIONS, POST",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": "600",
    }
    assert CORS.preflight_headers("https://evil.example.com", {"POST"}) == {}


# --- settings -----------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    """Settings with Soketi's required fields and ``values``."""
    return Settings(soketi_app_id="1", soketi_app_key="k", soketi_app_secret="s", **values)


def test_defaults_keep_jwt_mode_as_it_was() -> None:
    """By default: jwt, sub/role, exp required, the three roles as they are, no cookie, no CORS."""
    found = settings()
    assert (found.auth_mode, found.auth_jwt_id_claim, found.auth_jwt_role_claim) == (
        "jwt",
        "sub",
        "role",
    )
    assert found.auth_jwt_max_age_s is None
    assert found.auth_role_map == {"user": "user", "seller": "seller", "admin": "admin"}
    assert (found.auth_cookie_name, found.cors_allowed_origins) == ((), ())
    assert found.auth_forward_url is None


def test_list_and_map_settings_parse_from_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comma-separated cookies, origins and ``name:role`` pairs read as the env gives them."""
    monkeypatch.setenv("AUTH_COOKIE_NAME", "token, seller_token")
    monkeypatch.setenv("AUTH_ROLE_MAP", "user:user,Admin:admin")
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://Shop.example.com/,http://127.0.0.1:3000")
    monkeypatch.setenv("AUTH_FORWARD_COOKIES", "connect.sid")
    found = settings()
    assert found.auth_cookie_name == ("token", "seller_token")
    assert found.auth_role_map == {"user": "user", "Admin": "admin"}
    assert found.cors_allowed_origins == ("https://shop.example.com", "http://127.0.0.1:3000")
    assert found.auth_forward_cookies == ("connect.sid",)


@pytest.mark.parametrize(
    "values",
    [
        {"auth_role_map": "Admin:root"},
        {"auth_role_map": "admin"},
        {"cors_allowed_origins": "*"},
        {"cors_allowed_origins": "https://shop.example.com/path"},
        {"cors_allowed_origins": "null"},
        {"auth_forward_url": "ftp://backend/me"},
        {"auth_mode": "cookie"},
        {"auth_forward_cache_ttl_s": -1},
    ],
)
def test_bad_auth_settings_are_refused_at_start(values: dict[str, Any]) -> None:
    """A role outside the contract, a wildcard or path origin, a non-http URL fail at start."""
    with pytest.raises(ValidationError):
        settings(**values)
