"""``python -m devtools demo``: the developer commands (``make demo`` runs the demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from worker import logs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one developer command; return its exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools", description="bazaar-fanout developer tools (not shipped)."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="start local services, the worker, a demo publisher and a terminal view"
    )
    demo.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    demo.add_argument("--rate", type=float, default=4.0, help="events per second")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from devtools import demo as demo_module

    logs.configure("console", "warning")
    return asyncio.run(demo_module.main(duration_s=args.duration, rate=args.rate))


if __name__ == "__main__":
    raise SystemExit(main())
