"""Orders: ``order.created`` split per shop, ``order.status_changed``, ``payment.received``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handlers import channels
from handlers.model import Account, Delivery, NoLookups, Product, Store
from handlers.payloads import payload
from schemas import OrderCreated, OrderItem, OrderStatusChanged, PaymentReceived


@dataclass(frozen=True, slots=True)
class OrderLookups:
    """The customer and the ordered products, keyed by product id; missing ones are absent."""

    customer: Account | None
    products: Mapping[str, Product]


async def load_order_created(event: OrderCreated, store: Store) -> OrderLookups:
    """The customer from ``users``; every ordered product from ``products``, in one call."""
    data = event.data
    # Both asked before either is awaited: with a batching store they share a round trip.
    customers = store.users((data.customer_id,))
    products = store.products(_unique(item.product_id for item in data.items))
    return OrderLookups((await customers).get(data.customer_id), await products)


def decide_order_created(event: OrderCreated, found: OrderLookups) -> list[Delivery]:
    """``new-order`` to each shop (its items only), ``order-update`` to the customer and to
    the order's channel, ``new-order`` to the admins."""
    data = event.data
    customer_name = found.customer.name if found.customer else None
    stamps = {"eventId": event.id, "timestamp": event.timestamp_ms}
    # The fields of every ``order-update``, as the seed names them; none known yet.
    placed = {"status": "placed", "message": None, "estimatedDelivery": None}
    by_shop: dict[str, list[OrderItem]] = {}
    for item in data.items:
        by_shop.setdefault(item.shop_id, []).append(item)
    sellers = [
        Delivery(
            channels.private_seller(shop_id),
            "new-order",
            {
                "orderId": data.order_id,
                "customerId": data.customer_id,
                "customerName": customer_name,
                "currency": data.currency,
                "items": _enriched(items, found.products),
                "shopTotal": sum(item.price * item.quantity for item in items),
                **stamps,
            },
        )
        for shop_id, items in by_shop.items()
    ]
    customer = Delivery(
        channels.private_user(data.customer_id),
        "order-update",
        {
            "orderId": data.order_id,
            **placed,
            "totalPrice": data.total_price,
            "currency": data.currency,
            **stamps,
        },
    )
    # Its shops read it too: no total, no items (a shop sees only its own, on its channel).
    order = Delivery(
        channels.private_order(data.order_id),
        "order-update",
        {"orderId": data.order_id, "customerId": data.customer_id, **placed, **stamps},
    )
    admin = Delivery(
        channels.PRIVATE_ADMIN,
        "new-order",
        payload(event, customerName=customer_name, items=_enriched(data.items, found.products)),
    )
    return [*sellers, customer, order, admin]


def decide_order_status_changed(event: OrderStatusChanged, _: NoLookups) -> list[Delivery]:
    """``order-update`` to the customer, the order's channel, the shop and the admins."""
    data = event.data
    body = payload(event)
    targets = (
        channels.private_user(data.customer_id),
        channels.private_order(data.order_id),
        channels.private_seller(data.shop_id),
        channels.PRIVATE_ADMIN,
    )
    return [Delivery(channel, "order-update", body) for channel in targets]


def decide_payment_received(event: PaymentReceived, _: NoLookups) -> list[Delivery]:
    """``payment-received`` to each shop once, to the customer, the order's channel and the
    admins."""
    data = event.data
    body = payload(event)
    targets = (
        *(channels.private_seller(shop_id) for shop_id in _unique(data.shop_ids)),
        channels.private_user(data.customer_id),
        channels.private_order(data.order_id),
        channels.PRIVATE_ADMIN,
    )
    return [Delivery(channel, "payment-received", body) for channel in targets]


def _enriched(items: Sequence[OrderItem], products: Mapping[str, Product]) -> list[dict[str, Any]]:
    """Order items as ``{productId, shopId, quantity, price, name, image}``."""
    enriched = []
    for item in items:
        product = products.get(item.product_id)
        enriched.append(
            {
                **item.model_dump(by_alias=True, mode="json"),
                "name": product.name if product else None,
                "image": product.image if product else None,
            }
        )
    return enriched


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    """``ids`` without repeats, in first-seen order."""
    return tuple(dict.fromkeys(ids))
