"""Field types shared by the event families: money, counts, account kinds, bounded text."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

#: Who an account is: a shopper (collection ``users``) or a shop (collection ``shops``).
AccountType = Literal["user", "seller"]

#: A non-negative amount, kept exactly as published: an int stays an int, a float a float.
#: Strict, so ``true`` or ``"12"`` is refused rather than read as 1 or 12.
Money = (
    Annotated[int, Field(strict=True, ge=0)]
    | Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
)

#: A whole quantity of at least one; strict, so ``"2"``, ``2.0`` and ``true`` are refused.
Quantity = Annotated[int, Field(strict=True, ge=1)]

#: An ISO 4217-ish currency code; passed through untouched, only its length is bounded.
Currency = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=16)]

#: A status word such as ``shipped``.
Status = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=50)]

#: A title or short label.
ShortText = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]

#: Free text for people: an explanation, a reason, an alert message.
Text = Annotated[str, StringConstraints(strict=True, max_length=2_000)]

#: A chat message body. Its real limit is Soketi's payload size in UTF-8 bytes, which the
#: worker checks before sending (``payload_too_large``); this bound only caps memory.
Content = Annotated[str, StringConstraints(strict=True, max_length=200_000)]

#: A URL or date the worker only passes through.
PassThrough = Annotated[str, StringConstraints(strict=True, max_length=2_000)]
