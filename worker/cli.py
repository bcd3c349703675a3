"""``python -m worker COMMAND`` (also the ``bazaar-fanout`` console script).

Exit codes: 0 success, 1 the command ran but found a problem, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

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

    demo = commands.add_parser(
        "demo", help="start local services, the worker, a demo publisher and a terminal view"
    )
    demo.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    demo.add_argument("--rate", type=float, default=4.0, help="events per second")
    demo.set_defaults(func=_demo)
    return parser


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

    asyncio.run(main())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from worker import schema_export

    written = schema_export.write(args.out)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from worker import publish

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
    from worker import check

    settings = config.load_settings(config.Settings)
    results = asyncio.run(check.run_checks(settings))
    for name, problem in results:
        print(f"{name:<9} {'ok' if problem is None else 'FAIL: ' + problem}")
    return 0 if all(problem is None for _, problem in results) else 1


def _demo(args: argparse.Namespace) -> int:
    from worker import demo

    logs.configure("console", "warning")
    return asyncio.run(demo.main(duration_s=args.duration, rate=args.rate))
