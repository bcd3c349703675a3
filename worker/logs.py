"""Logging set-up, done once in ``main()``: JSON lines in production, readable on a terminal."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(fmt: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in ``fmt`` (``json`` or ``console``)."""
    renderer: structlog.typing.Processor = (
        # orjson renders to bytes, written as they are: structlog's fast path.
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if fmt == "json"
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
