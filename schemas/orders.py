"""Order events: ``order.created``, ``order.status_changed``, ``payment.received``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.base import EnvelopeFields, Id, Model
from schemas.fields import Currency, Money, PassThrough, Quantity, Status, Text


class OrderItem(Model):
    """One line of an order: a product of one shop, how many and at what unit price."""

    product_id: Id
    shop_id: Id
    quantity: Quantity
    price: Money


class OrderCreatedData(Model):
    """A placed order, possibly spanning several shops."""

    order_id: Id
    customer_id: Id
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=1000)]
    total_price: Money
    currency: Currency | None = None


class OrderCreated(EnvelopeFields):
    """``order.created``: a customer placed an order."""

    type: Literal["order.created"]
    data: OrderCreatedData


class OrderStatusChangedData(Model):
    """An order's new status, as one shop moved it."""

    order_id: Id
    customer_id: Id
    shop_id: Id
    status: Status
    previous_status: Status | None = None
    message: Text | None = None
    estimated_delivery: PassThrough | None = None


class OrderStatusChanged(EnvelopeFields):
    """``order.status_changed``: an order moved to a new status."""

    type: Literal["order.status_changed"]
    data: OrderStatusChangedData


class PaymentReceivedData(Model):
    """A payment for an order, which may concern several shops."""

    order_id: Id
    payment_id: Id
    customer_id: Id
    shop_ids: Annotated[list[Id], Field(min_length=1, max_length=100)]
    amount: Money
    currency: Currency | None = None
    method: Status | None = None


class PaymentReceived(EnvelopeFields):
    """``payment.received``: an order was paid."""

    type: Literal["payment.received"]
    data: PaymentReceivedData
