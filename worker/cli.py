"""``python -m worker COMMAND`` (also the ``bazaar-fanout`` console script).

Exit codes: 0 success, 1 the command ran but found a problem, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker import config, logs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = args.func(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bazaar-fanout",
        description="Bazaar fan-out worker: RabbitMQ domain events to Soketi (Pusher protocol).",
        epilog="Configuration comes from the environment (see README: Configuration).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the worker (consumer + HTTP server)")
    run.set_defaults(func=_run)

    schemas = commands.add_parser("schemas", help="write the JSON Schema of every event type")
    schemas.add_argument("--out", type=Path, default=Path("schemas-out"), help="output folder")
    schemas.set_defaults(func=_schemas)

    publish = commands.add_parser(
        "publish", help="validate and publish one event envelope to the exchange"
    )
    publish.add_argument("file", nargs="?", help="JSON file with the envelope, or - for stdin")
    publish.add_argument("--type", dest="event_type", help="event type, e.g. order.created")
    publish.add_argument("--data", help="the event's data as JSON (with --type)")
    publish.set_defaults(func=_publish)

    check = commands.add_parser("check", help="check RabbitMQ, MongoDB and Soketi, one line each")
    check.set_defaults(func=_check)

    _add_dlq(commands)

    return parser


def _add_dlq(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="inspect, replay or purge the dead-letter queue")
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)

    def filters(parser: argparse.ArgumentParser, *, selection: bool) -> None:
        parser.add_argument("--reason", help="only this fanout-reason, e.g. invalid_event")
        parser.add_argument("--type", dest="event_type", help="only this event type")
        parser.add_argument(
            "--min-age", help="only messages that first failed this long ago (10m, 2h)"
        )
        if selection:
            parser.add_argument("--id", dest="ids", nargs="+", default=(), help="these IDs")
            parser.add_argument("--all", action="store_true", help="every message")

    listing = actions.add_parser("list", help="the DLQ as a table, without consuming it")
    filters(listing, selection=False)
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    listing.set_defaults(func=_dlq_list)

    show = actions.add_parser("show", help="one message: headers and body")
    show.add_argument("id", help="AMQP message_id, or the first 12 hex of SHA-256(body)")
    show.set_defaults(func=_dlq_show)

    replay = actions.add_parser(
        "replay", help="send messages back to the worker's queue with attempts reset"
    )
    filters(replay, selection=True)
    replay.add_argument("--dry-run", action="store_true", help="only say what would be replayed")
    replay.add_argument("--rate", type=float, help="at most N messages per second")
    replay.set_defaults(func=_dlq_replay)

    purge = actions.add_parser("purge", help="delete messages (only with --yes)")
    filters(purge, selection=True)
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.set_defaults(func=_dlq_purge)


def _selection(args: argparse.Namespace) -> Any:
    from worker.ops import dlq

    try:
        min_age = dlq.parse_age(args.min_age) if args.min_age else None
    except ValueError:
        raise SystemExit(
            _usage(f"--min-age {args.min_age!r} is not an age like 90s, 10m, 2h")
        ) from None
    return dlq.Selection(
        ids=tuple(getattr(args, "ids", ()) or ()),
        reason=args.reason,
        event_type=args.event_type,
        min_age_s=min_age,
        everything=getattr(args, "all", False),
    )


def _usage(line: str) -> int:
    print(f"bazaar-fanout: {line}", file=sys.stderr)
    return 2


def _dlq_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import orjson

    from worker.ops import dlq

    settings = config.load_settings(config.BrokerSettings)
    letters = asyncio.run(dlq.list_letters(settings, _selection(args)))
    if args.json:
        print(orjson.dumps([letter.as_json() for letter in letters]).decode())
    elif letters:
        print(dlq.table(letters, datetime.now(UTC)))
    else:
        print(f"{settings.dlq_name}: no messages match")
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    import orjson

    from worker.ops import dlq

    settings = config.load_settings(config.BrokerSettings)
    letters = asyncio.run(dlq.list_letters(settings, dlq.Selection(ids=(args.id,))))
    if not letters:
        print(f"bazaar-fanout: no message {args.id} in {settings.dlq_name}", file=sys.stderr)
        return 1
    letter = letters[0]
    print(f"id:          {letter.id}\nrouting key: {letter.routing_key}\nheaders:")
    for key, value in sorted(letter.headers.items()):
        print(f"  {key}: {value}")
    try:
        body = orjson.dumps(orjson.loads(letter.body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        body = letter.body.decode("utf-8", "replace")
    print(f"body ({len(letter.body)} bytes):\n{body}")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:

    from worker.ops import dlq

    settings = config.load_settings(config.BrokerSettings)
    selection = _selection(args)
    if selection.is_empty:
        return _usage("dlq replay needs --id, --reason, --type, --min-age or --all")
    logs.configure("console", "info")

    def progress(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"replayed {done}/{total}", file=sys.stderr)

    outcome = asyncio.run(
        dlq.replay(
            settings, selection, dry_run=args.dry_run, rate_per_s=args.rate, progress=progress
        )
    )
    if args.dry_run:
        print(f"would replay {outcome.selected} message(s) from {settings.dlq_name}")
        return 0
    _log_dlq_action(
        "fanout.dlq_replayed",
        settings,
        selection,
        selected=outcome.selected,
        replayed=outcome.done,
        failed=len(outcome.failed),
    )
    print(f"replayed {outcome.done} of {outcome.selected} message(s)")
    for failed in outcome.failed:
        print(f"  not replayed (still in the DLQ): {failed}", file=sys.stderr)
    return 0 if not outcome.failed else 1


def _log_dlq_action(
    event: str, settings: config.BrokerSettings, selection: Any, **counts: int
) -> None:
    """One audit line for an operator's DLQ action: who, which queue, what was selected."""
    import structlog

    from worker.ops import dlq

    structlog.get_logger("fanout").info(
        event,
        operator=dlq.operator(),
        queue=settings.dlq_name,
        reason=selection.reason,
        event_type=selection.event_type,
        ids=list(selection.ids),
        **counts,
    )


def _dlq_purge(args: argparse.Namespace) -> int:

    from worker.ops import dlq

    settings = config.load_settings(config.BrokerSettings)
    selection = _selection(args)
    if selection.is_empty:
        return _usage("dlq purge needs --id, --reason, --type, --min-age or --all")
    outcome = asyncio.run(dlq.purge(settings, selection, confirmed=args.yes))
    if not args.yes:
        print(
            f"would delete {outcome.selected} message(s) from {settings.dlq_name}; "
            "add --yes to delete them"
        )
        return 0
    logs.configure("console", "info")
    _log_dlq_action("fanout.dlq_purged", settings, selection, deleted=outcome.done)
    print(f"deleted {outcome.done} message(s)")
    return 0


def _run(_: argparse.Namespace) -> int:
    from worker import app

    settings = config.load_settings(config.Settings)
    logs.configure(settings.log_format, settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await app.run(settings, stop=stop)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's own.

    The worker's CPU goes mostly to socket and callback bookkeeping; uvloop does that part
    in C (about 10 % more events per second in ``bench/``).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return None
    return uvloop.new_event_loop


def _schemas(args: argparse.Namespace) -> int:
    from worker.ops import schema_export

    written = schema_export.write(args.out)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from worker.ops import publish

    settings = config.load_settings(config.BrokerSettings)
    try:
        envelope = publish.envelope_from_args(args.file, args.event_type, args.data)
    except publish.UsageError as error:
        print(f"bazaar-fanout publish: {error}", file=sys.stderr)
        return 2
    event = asyncio.run(publish.publish(settings, envelope))
    print(f"published {event.type} id={event.id}")
    return 0


def _check(_: argparse.Namespace) -> int:
    from worker.ops import check

    settings = config.load_settings(config.Settings)
    logs.configure("console", "error")
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # we print our own one-line verdict
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    results = asyncio.run(check.run_checks(settings))
    for name, problem in results:
        print(f"{name:<9} {'ok' if problem is None else 'FAIL: ' + problem}")
    return 0 if all(problem is None for _, problem in results) else 1
