"""Chat events: ``message.created``, ``typing.started``, ``typing.stopped``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field

from schemas.base import EnvelopeFields, Id, Model
from schemas.fields import AccountType, Content, PassThrough


class MessageCreatedData(Model):
    """A chat message sent by a user or a shop to the other side of a conversation."""

    message_id: Id
    conversation_id: Id
    sender_id: Id
    sender_type: AccountType
    recipient_id: Id
    recipient_type: AccountType
    content: Content
    #: What the message carries, as the seed's ``new-message`` names it. ``kind``, its name
    #: in contract v1.0, is still read (deprecated); payloads carry ``type`` only.
    type: Annotated[
        Literal["text", "image", "file"],
        Field(alias="type", validation_alias=AliasChoices("type", "kind")),
    ] = "text"
    attachment_url: PassThrough | None = None


class MessageCreated(EnvelopeFields):
    """``message.created``: a new chat message."""

    type: Literal["message.created"]
    data: MessageCreatedData


class TypingData(Model):
    """Who is typing in which conversation."""

    conversation_id: Id
    user_id: Id
    user_type: AccountType


class TypingStartedData(TypingData):
    """``typing.started`` data."""


class TypingStoppedData(TypingData):
    """``typing.stopped`` data."""


class TypingStarted(EnvelopeFields):
    """``typing.started``: someone began typing (ephemeral)."""

    type: Literal["typing.started"]
    data: TypingStartedData


class TypingStopped(EnvelopeFields):
    """``typing.stopped``: someone stopped typing (ephemeral)."""

    type: Literal["typing.stopped"]
    data: TypingStoppedData
