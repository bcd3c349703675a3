"""Products: ``product.stock_low``, ``product.approved``, ``product.rejected`` to the shop."""

from __future__ import annotations

from handlers import channels
from handlers.model import Delivery, ProductLookups, Store
from handlers.payloads import payload
from schemas import ProductApproved, ProductRejected, ProductStockLow


async def load_product(
    event: ProductStockLow | ProductApproved | ProductRejected, store: Store
) -> ProductLookups:
    """The product the event names, from ``products``."""
    product_id = event.data.product_id
    return ProductLookups((await store.products((product_id,))).get(product_id))


def decide_product_stock_low(event: ProductStockLow, found: ProductLookups) -> list[Delivery]:
    """``stock-low`` to the product's shop, taken from the product when the event omits it.

    Without a shop id in the event and without the product in MongoDB (or with a stored
    ``shopId`` that is not a valid id) nobody can be told: no delivery.
    """
    product = found.product
    shop_id = event.data.shop_id or (product.shop_id if product else None)
    if shop_id is None or not channels.is_id(shop_id):
        return []
    body = payload(event, shopId=shop_id, productName=product.name if product else None)
    return [Delivery(channels.private_seller(shop_id), "stock-low", body)]


def decide_product_approved(event: ProductApproved, found: ProductLookups) -> list[Delivery]:
    """``product-approved`` to the product's shop."""
    return _to_shop(event, found, "product-approved")


def decide_product_rejected(event: ProductRejected, found: ProductLookups) -> list[Delivery]:
    """``product-rejected`` to the product's shop."""
    return _to_shop(event, found, "product-rejected")


def _to_shop(
    event: ProductApproved | ProductRejected, found: ProductLookups, pusher_event: str
) -> list[Delivery]:
    name = found.product.name if found.product else None
    body = payload(event, productName=name)
    return [Delivery(channels.private_seller(event.data.shop_id), pusher_event, body)]
