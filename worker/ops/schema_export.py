"""Writing the event catalogue for the Node team: JSON Schema per event and an AsyncAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from schemas import json_schemas

_JSON = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def asyncapi(schemas: dict[str, dict[str, Any]], exchange: str = "bazaar.events") -> dict[str, Any]:
    """An AsyncAPI 2.6 document: one channel per routing key on the topic exchange."""
    channels = {
        event_type: {
            "description": f"Routing key `{event_type}` on the `{exchange}` topic exchange.",
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": exchange, "type": "topic", "durable": True},
                    "bindingVersion": "0.2.0",
                }
            },
            "publish": {
                "operationId": "publish_" + event_type.replace(".", "_"),
                "summary": "The backend publishes this event; the fan-out worker consumes it.",
                "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.2.0"}},
                "message": {"$ref": f"#/components/messages/{event_type}"},
            },
        }
        for event_type in sorted(schemas)
    }
    messages = {
        event_type: {
            "name": event_type,
            "contentType": "application/json",
            "payload": {"$ref": f"{event_type}.schema.json"},
        }
        for event_type in sorted(schemas)
    }
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "Bhavya Bazaar domain events",
            "version": "1.0.0",
            "description": "Events the backend publishes for the fan-out worker (contract v1).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages},
    }


def write(out: Path) -> list[Path]:
    """Write ``{type}.schema.json`` per event type and ``asyncapi.json``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    schemas = json_schemas()
    for event_type, schema in sorted(schemas.items()):
        path = out / f"{event_type}.schema.json"
        path.write_bytes(orjson.dumps(schema, option=_JSON))
        written.append(path)
    document = out / "asyncapi.json"
    document.write_bytes(orjson.dumps(asyncapi(schemas), option=_JSON))
    written.append(document)
    return written
