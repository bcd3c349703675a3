"""Reading the backend's stored values: ids, texts, image ``src`` strings and order parties."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId

from tests.fixtures import bhavya
from worker.mongo.access import order_customer, order_shops
from worker.mongo.values import first_image, id_of, id_set, id_text, image_src, text

OID = ObjectId("665f1c2b9d3e4a0012ab34cd")
HEX = str(OID)
CLOUDINARY = {"public_id": "avatars/x1", "url": "https://res.cloudinary.com/demo/x1.jpg"}


@pytest.mark.parametrize(
    ("stored", "src"),
    [
        ("avatar-1717.png", "avatar-1717.png"),
        ("https://cdn.example.in/a.png", "https://cdn.example.in/a.png"),
        ("/user-placeholder.png", "/user-placeholder.png"),
        (CLOUDINARY, CLOUDINARY["url"]),
        ({"public_id": "avatars/x1"}, None),
        ({"url": 5}, None),
        ({"url": ""}, None),
        ("", None),
        (None, None),
        (5, None),
        (["a.png"], None),
    ],
)
def test_image_src(stored: object, src: str | None) -> None:
    """A string passes unchanged, an object gives its ``url``, anything else is no image."""
    assert image_src(stored) == src


@pytest.mark.parametrize(
    ("stored", "src"),
    [
        (["p1.jpg", "p2.jpg"], "p1.jpg"),
        ([CLOUDINARY, "p2.jpg"], CLOUDINARY["url"]),
        ([None, {"public_id": "x"}, "p2.jpg"], "p2.jpg"),
        ([], None),
        ("p1.jpg", "p1.jpg"),
        (None, None),
    ],
)
def test_first_image(stored: object, src: str | None) -> None:
    """A product's image is the first usable entry of its ``images``."""
    assert first_image(stored) == src


@pytest.mark.parametrize(
    ("reader", "stored", "read"),
    [
        (text, "Asha Traders", "Asha Traders"),
        (text, {"first": "Asha"}, None),
        (text, 42, None),
        (id_text, OID, HEX),
        (id_text, "u1", "u1"),
        (id_text, "", None),
        (id_text, {"_id": "u1"}, None),
        (id_text, 7, None),
        (id_of, {"_id": OID, "name": "Asha"}, HEX),
        (id_of, {"_id": "u1"}, "u1"),
        (id_of, "u1", "u1"),
        (id_of, {"name": "Asha"}, None),
    ],
)
def test_text_and_ids(reader: Any, stored: object, read: str | None) -> None:
    """Names and ids are read only from strings (and ObjectIds): never an object's repr."""
    assert reader(stored) == read


def test_id_set_keeps_only_ids() -> None:
    """An array of ids in both forms reads as strings; other entries and non-arrays are empty."""
    assert id_set([OID, "s1", None, {"_id": "s2"}, ""]) == {HEX, "s1"}
    assert id_set("s1") == frozenset()


CUSTOMER = bhavya.user(name="Aarav")
SHOP_A, SHOP_B = bhavya.shop(name="Chai Point"), bhavya.shop(name="Kirana")
REAL_ORDER = bhavya.order(CUSTOMER, [(bhavya.product(SHOP_A), 2), (bhavya.product(SHOP_A), 1)])


@pytest.mark.parametrize(
    ("stored", "customer", "shops"),
    [
        pytest.param(REAL_ORDER, str(CUSTOMER["_id"]), {str(SHOP_A["_id"])}, id="backend-shape"),
        pytest.param(
            {**REAL_ORDER, "user": {**REAL_ORDER["user"], "_id": CUSTOMER["_id"]}},
            str(CUSTOMER["_id"]),
            {str(SHOP_A["_id"])},
            id="backend-shape-objectid-user",
        ),
        pytest.param(
            {"customerId": OID, "shopIds": ["s1", ObjectId(str(SHOP_B["_id"]))]},
            HEX,
            {"s1", str(SHOP_B["_id"])},
            id="contract-shape",
        ),
        pytest.param(
            {**REAL_ORDER, "customerId": "u9", "shopIds": ["s9"]},
            "u9",
            {"s9", str(SHOP_A["_id"])},
            id="both-shapes",
        ),
        pytest.param({"user": "u7", "cart": "not a list"}, "u7", set(), id="user-as-a-plain-id"),
        pytest.param({"cart": [{"shopId": {"_id": "s1"}}, 3]}, None, set(), id="no-parties"),
    ],
)
def test_order_parties_in_either_shape(stored: Any, customer: str | None, shops: set[str]) -> None:
    """An order's customer and shops come from ``user``/``cart`` (the backend) or
    ``customerId``/``shopIds`` (the contract), ids in either form."""
    assert order_customer(stored) == customer
    assert order_shops(stored) == shops
