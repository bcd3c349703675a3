"""Channel authorization as pure tables: token verification and the section-5 policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from handlers.channels import ChannelRef
from worker.web.auth import (
    Decision,
    Facts,
    OrderParties,
    Subject,
    Unauthenticated,
    decide,
    parse_channel,
    verify_token,
)

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4  # 80 bytes: long enough for HS512 too
OID = "65f0c0ffee0123456789abcd"  # an ObjectId as the backend writes it, in string form

USER_12 = Subject("12", "user")
USER_123 = Subject("123", "user")
USER_OID = Subject(OID, "user")
SELLER_S1 = Subject("s1", "seller")
SELLER_S2 = Subject("s2", "seller")
SELLER_12 = Subject("12", "seller")
ADMIN = Subject("root", "admin")

FACTS = Facts(
    members={"c1": frozenset({"12", "s1"}), OID: frozenset({OID, "s2"})},
    orders={
        "o1": OrderParties(customer_id="12", shop_ids=frozenset({"s1", "s2"})),
        OID: OrderParties(customer_id=OID, shop_ids=frozenset({"s2"})),
        "o-orphan": OrderParties(customer_id=None, shop_ids=frozenset()),
    },
)

ALLOWED: list[tuple[Subject, str]] = [
    (USER_12, "private-user-12"),
    (USER_OID, f"private-user-{OID}"),
    (ADMIN, "private-user-root"),
    (SELLER_S1, "private-seller-s1"),
    (ADMIN, "private-admin"),
    (USER_12, "private-chat-c1"),
    (SELLER_S1, "private-chat-c1"),
    (USER_OID, f"private-chat-{OID}"),
    (USER_12, "private-order-o1"),
    (SELLER_S1, "private-order-o1"),
    (SELLER_S2, "private-order-o1"),
    (USER_OID, f"private-order-{OID}"),
    (ADMIN, "private-order-o1"),
    (ADMIN, "private-order-unknown"),
]

REFUSED: list[tuple[str, Subject, str, str]] = [
    ("another user's channel", USER_12, "private-user-99", "not_your_channel"),
    ("admin on another user's channel", ADMIN, "private-user-12", "not_your_channel"),
    ("prefix: 12 asks for 123", USER_12, "private-user-123", "not_your_channel"),
    ("prefix: 123 asks for 12", USER_123, "private-user-12", "not_your_channel"),
    ("seller on a user channel, same id", SELLER_12, "private-user-12", "not_your_channel"),
    (
        "user on a seller channel, same id",
        Subject("s1", "user"),
        "private-seller-s1",
        "not_your_channel",
    ),
    ("another seller's channel", SELLER_S2, "private-seller-s1", "not_your_channel"),
    ("admin on a seller channel", ADMIN, "private-seller-s1", "not_your_channel"),
    ("private-admin as user", USER_12, "private-admin", "admin_only"),
    ("private-admin as seller", SELLER_S1, "private-admin", "admin_only"),
    ("non-member chat", USER_123, "private-chat-c1", "not_a_member"),
    ("admin is no chat member", ADMIN, "private-chat-c1", "not_a_member"),
    ("unknown conversation", USER_12, "private-chat-nope", "not_a_member"),
    ("another customer's order", USER_123, "private-order-o1", "not_an_order_party"),
    ("a shop not in the order", Subject("s3", "seller"), "private-order-o1", "not_an_order_party"),
    ("customer id as a seller", SELLER_12, "private-order-o1", "not_an_order_party"),
    ("shop id as a user", Subject("s1", "user"), "private-order-o1", "not_an_order_party"),
    ("unknown order", USER_12, "private-order-nope", "not_an_order_party"),
    ("order without parties", USER_12, "private-order-o-orphan", "not_an_order_party"),
    ("public is never authorized", ADMIN, "public", "public_channel_needs_no_auth"),
    ("comma list", USER_12, "private-user-12,private-admin", "unknown_channel"),
    ("comma in id", ADMIN, "private-user-12,13", "unknown_channel"),
    ("extra segment", USER_12, "private-user-12-x", "not_your_channel"),
    ("extra dotted segment", USER_12, "private-user-12.x", "unknown_channel"),
    ("admin suffix", ADMIN, "private-admin-x", "unknown_channel"),
    ("admin prefix", ADMIN, "xprivate-admin", "unknown_channel"),
    ("presence channel", USER_12, "presence-user-12", "unknown_channel"),
    ("encrypted channel", USER_12, "private-encrypted-user-12", "unknown_channel"),
    ("unknown kind", ADMIN, "private-shop-s1", "unknown_channel"),
    ("empty id", ADMIN, "private-user-", "unknown_channel"),
    ("id too long", ADMIN, "private-user-" + "a" * 65, "unknown_channel"),
    ("unicode digit id", ADMIN, "private-user-\u0661\u0662", "unknown_channel"),
    ("unicode letter id", USER_12, "private-user-12\u00e9", "unknown_channel"),
    ("trailing newline", USER_12, "private-user-12\n", "unknown_channel"),
    ("space", USER_12, "private-user-12 ", "unknown_channel"),
    ("upper-case prefix", USER_12, "Private-user-12", "unknown_channel"),
    ("empty name", ADMIN, "", "unknown_channel"),
]


@pytest.mark.parametrize(("subject", "channel"), ALLOWED)
def test_legitimate_subscriptions_are_allowed(subject: Subject, channel: str) -> None:
    """Every case the contract allows is allowed with reason ``allowed``."""
    assert decide(subject, channel, FACTS) == Decision(True, "allowed")


@pytest.mark.parametrize(
    ("subject", "channel", "reason"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_attacks_are_refused_with_a_reason(subject: Subject, channel: str, reason: str) -> None:
    """Each attack on the policy is refused with its short machine reason."""
    assert decide(subject, channel, FACTS) == Decision(False, reason)


def test_extra_segment_is_read_as_another_id_never_as_a_prefix() -> None:
    """``private-user-12-x`` names the account ``12-x``, which user 12 does not own."""
    assert parse_channel("private-user-12-x") == ChannelRef("user", "12-x")
    assert decide(Subject("12-x", "user"), "private-user-12-x", FACTS).allowed


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("private-admin", ChannelRef("admin", "")),
        ("private-user-a_B-9", ChannelRef("user", "a_B-9")),
        ("private-seller-x", ChannelRef("seller", "x")),
        ("private-chat-c1", ChannelRef("chat", "c1")),
        (f"private-order-{OID}", ChannelRef("order", OID)),
        ("private-order-" + "z" * 64, ChannelRef("order", "z" * 64)),
        ("private-order-" + "z" * 65, None),
        ("private-chat-c1;x", None),
        ("public", None),
    ],
)
def test_channel_names_parse_exactly(name: str, ref: ChannelRef | None) -> None:
    """Only whole names of the five private kinds parse, with the id they carry."""
    assert parse_channel(name) == ref


# --- tokens ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "12", "role": "user", "exp": int(time.time()) + 600}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def token(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    """An HS256 token with valid claims unless ``overrides`` change them (``None`` drops one)."""
    return jwt.encode(_claims(**overrides), secret, algorithm=algorithm)


def unsigned(header: dict[str, Any], **overrides: Any) -> str:
    """A token crafted by hand: base64url header and payload, and an empty signature."""
    body = json.dumps(_claims(**overrides)).encode()
    return f"{_b64(json.dumps(header).encode())}.{_b64(body)}."


def _tampered() -> str:
    header, _, signature = token().split(".")
    forged = _b64(json.dumps(_claims(role="admin")).encode())
    return f"{header}.{forged}.{signature}"


def test_a_valid_token_names_its_subject() -> None:
    """A well-signed HS256 token gives its ``sub`` and ``role``."""
    assert verify_token(token(sub=OID, role="seller"), SECRET) == Subject(OID, "seller")


@pytest.mark.parametrize("role", ["user", "seller", "admin"])
def test_each_role_is_accepted(role: str) -> None:
    """The three roles of the contract are accepted."""
    assert verify_token(token(role=role), SECRET).role == role


def test_a_token_expired_within_the_leeway_is_accepted() -> None:
    """Five seconds past ``exp`` is within the ten-second clock-skew leeway."""
    assert verify_token(token(exp=int(time.time()) - 5), SECRET) == USER_12


TOKEN_ATTACKS: list[tuple[str, str, str]] = [
    ("forged signature", token(secret="not-the-secret-" + "f" * 64), "bad_signature"),
    ("payload swapped under a valid signature", _tampered(), "bad_signature"),
    ("expired", token(exp=int(time.time()) - 60), "token_expired"),
    ("alg none", unsigned({"alg": "none", "typ": "JWT"}), "algorithm_not_allowed"),
    ("alg None", unsigned({"alg": "None"}), "algorithm_not_allowed"),
    ("alg HS512", token(algorithm="HS512"), "algorithm_not_allowed"),
    ("alg RS256 header, HS body", unsigned({"alg": "RS256"}), "algorithm_not_allowed"),
    ("missing sub", token(sub=None), "missing_claim"),
    ("missing role", token(role=None), "missing_claim"),
    ("missing exp", token(exp=None), "missing_claim"),
    ("unknown role", token(role="superuser"), "invalid_role"),
    ("role in other case", token(role="Admin"), "invalid_role"),
    ("role as a list", token(role=["admin"]), "invalid_role"),
    ("numeric sub", token(sub=12), "invalid_subject"),
    ("empty sub", token(sub=""), "invalid_subject"),
    ("sub with a comma", token(sub="12,13"), "invalid_subject"),
    ("sub too long", token(sub="a" * 65), "invalid_subject"),
    ("fullwidth-digit sub", token(sub="\uff11\uff12"), "invalid_subject"),
    ("exp not a number", token(exp="tomorrow"), "malformed_token"),
    ("not yet valid", token(nbf=int(time.time()) + 600), "token_not_yet_valid"),
    ("garbage", "not.a.token", "malformed_token"),
    ("two segments", "abc.def", "malformed_token"),
    ("empty", "", "missing_token"),
    ("oversized", "a" * 5000, "token_too_long"),
]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [case[1:] for case in TOKEN_ATTACKS],
    ids=[case[0] for case in TOKEN_ATTACKS],
)
def test_bad_tokens_are_refused_with_a_reason(bad: str, reason: str) -> None:
    """Each bad token raises ``Unauthenticated`` with its reason, never quoting the token."""
    with pytest.raises(Unauthenticated) as caught:
        verify_token(bad, SECRET)
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert SECRET not in str(caught.value)


def test_rs256_and_hs256_keyed_with_the_public_key_are_both_refused() -> None:
    """RS/HS confusion: a real RS256 token, and HS256 keyed with its public key, both fail."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    rs256 = jwt.encode(_claims(role="admin"), private_key, algorithm="RS256")
    # PyJWT itself refuses a PEM as an HMAC key, so the confused token is built by hand.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    confused = f"{header}.{payload}.{_b64(mac)}"
    reasons = []
    for forged in (rs256, confused):
        with pytest.raises(Unauthenticated) as caught:
            verify_token(forged, SECRET)
        reasons.append(caught.value.reason)
    assert reasons == ["algorithm_not_allowed", "bad_signature"]
