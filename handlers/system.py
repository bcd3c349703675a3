"""Operators: ``system.alert`` to the admins or to everyone."""

from __future__ import annotations

from handlers import channels
from handlers.model import Delivery, NoLookups
from handlers.payloads import payload
from schemas import SystemAlert


def decide_system_alert(event: SystemAlert, _: NoLookups) -> list[Delivery]:
    """``system-alert`` to ``private-admin``, or to ``public`` when the audience is public."""
    channel = channels.PRIVATE_ADMIN if event.data.audience == "admin" else channels.PUBLIC
    return [Delivery(channel, "system-alert", payload(event))]
