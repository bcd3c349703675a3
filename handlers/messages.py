"""Chat: ``message.created`` to the conversation and the recipient; ``typing.*`` to the chat."""

from __future__ import annotations

from handlers import channels
from handlers.model import AccountLookups, Delivery, NoLookups, Store
from handlers.payloads import payload
from schemas import MessageCreated, TypingStarted, TypingStopped


async def load_message_created(event: MessageCreated, store: Store) -> AccountLookups:
    """The sender, from ``users`` or ``shops`` according to ``senderType``."""
    sender_id = event.data.sender_id
    lookup = store.users if event.data.sender_type == "user" else store.shops
    return AccountLookups((await lookup((sender_id,))).get(sender_id))


def decide_message_created(event: MessageCreated, found: AccountLookups) -> list[Delivery]:
    """``new-message`` to the conversation's channel and to the recipient's own channel."""
    data = event.data
    sender = found.account
    body = payload(
        event,
        senderName=sender.name if sender else None,
        senderAvatar=sender.avatar if sender else None,
    )
    return [
        Delivery(channels.private_chat(data.conversation_id), "new-message", body),
        Delivery(
            channels.private_account(data.recipient_type, data.recipient_id), "new-message", body
        ),
    ]


def decide_typing_started(event: TypingStarted, _: NoLookups) -> list[Delivery]:
    """``typing-start`` to the conversation's channel."""
    return [
        Delivery(channels.private_chat(event.data.conversation_id), "typing-start", payload(event))
    ]


def decide_typing_stopped(event: TypingStopped, _: NoLookups) -> list[Delivery]:
    """``typing-stop`` to the conversation's channel."""
    return [
        Delivery(channels.private_chat(event.data.conversation_id), "typing-stop", payload(event))
    ]
