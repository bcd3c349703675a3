"""Chat events: ``message.created``, ``typing.started``, ``typing.stopped``."""

from __future__ import annotations

from typing import Literal

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
    kind: Literal["text", "image", "file"] = "text"
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
