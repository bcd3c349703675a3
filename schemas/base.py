"""Building blocks shared by every event model: ids, the envelope fields, camelCase aliases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SOCKET_ID_PATTERN = r"^[0-9]+\.[0-9]+$"  # ASCII digits only: \d also matches "٣"

#: An id as the contract defines it: 1-64 chars of ``[A-Za-z0-9_-]``, so it can never
#: inject a ``-``-free separator such as ``,``/``.``/space into a channel name.
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, strict=True)]
SocketId = Annotated[str, StringConstraints(pattern=SOCKET_ID_PATTERN, max_length=64, strict=True)]


def _iso_text(value: object) -> object:
    """Refuse non-strings: pydantic would read a number as epoch seconds *or* milliseconds."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 string with a timezone")
    return value


#: ``occurredAt``: an ISO-8601 string with a timezone (section 2), never a bare number.
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


class Model(BaseModel):
    """Frozen pydantic model whose fields are written camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        str_max_length=200_000,
    )


class EnvelopeFields(Model):
    """The envelope (CONTRACT section 2) without ``type`` and ``data``, which each event narrows."""

    id: Id
    occurred_at: IsoDatetime
    socket_id: SocketId | None = None
    version: int = Field(default=1, ge=1, strict=True)
    source: str | None = Field(default=None, max_length=200)
    correlation_id: str | None = Field(default=None, max_length=200)

    @property
    def timestamp_ms(self) -> int:
        """``occurredAt`` as epoch milliseconds, the ``timestamp`` of every payload."""
        return epoch_ms(self.occurred_at)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, rounded down, in exact integer arithmetic."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
