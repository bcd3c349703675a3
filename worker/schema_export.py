"""Writing the event catalogue as JSON Schema files, for the Node team."""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas import json_schemas


def write(out: Path) -> list[Path]:
    """Write ``{type}.schema.json`` per event type plus ``index.json``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    schemas = json_schemas()
    for event_type, schema in sorted(schemas.items()):
        path = out / f"{event_type}.schema.json"
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    index = out / "index.json"
    index.write_bytes(
        orjson.dumps({"eventTypes": sorted(schemas)}, option=orjson.OPT_INDENT_2)
    )
    written.append(index)
    return written
