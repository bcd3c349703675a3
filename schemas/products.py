"""Product events: ``product.stock_low``, ``product.approved``, ``product.rejected``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.base import EnvelopeFields, Id, Model
from schemas.fields import Text


class ProductStockLowData(Model):
    """A product's stock fell to or below its threshold.

    ``currentStock`` may be negative (an oversold product is exactly when the shop must know).
    """

    product_id: Id
    shop_id: Id | None = None
    current_stock: Annotated[int, Field(strict=True)]
    threshold: Annotated[int, Field(strict=True, ge=0)]


class ProductStockLow(EnvelopeFields):
    """``product.stock_low``: a shop should restock a product."""

    type: Literal["product.stock_low"]
    data: ProductStockLowData


class ProductReviewData(Model):
    """The outcome of a product's moderation."""

    product_id: Id
    shop_id: Id
    reason: Text | None = None


class ProductApprovedData(ProductReviewData):
    """``product.approved`` data."""


class ProductRejectedData(ProductReviewData):
    """``product.rejected`` data."""


class ProductApproved(EnvelopeFields):
    """``product.approved``: moderation accepted a product."""

    type: Literal["product.approved"]
    data: ProductApprovedData


class ProductRejected(EnvelopeFields):
    """``product.rejected``: moderation refused a product."""

    type: Literal["product.rejected"]
    data: ProductRejectedData
