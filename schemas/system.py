"""Operator events: ``system.alert``."""

from __future__ import annotations

from typing import Literal

from schemas.base import EnvelopeFields, Model
from schemas.fields import ShortText, Text


class SystemAlertData(Model):
    """An alert for the admins, or for everyone when ``audience`` is ``public``."""

    severity: Literal["info", "warning", "critical"]
    title: ShortText
    message: Text
    audience: Literal["admin", "public"] = "admin"


class SystemAlert(EnvelopeFields):
    """``system.alert``: a message from the operators."""

    type: Literal["system.alert"]
    data: SystemAlertData
