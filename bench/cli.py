"""Command line: start the services, run the selected paths ``--runs`` times, print the report.

Progress goes to stderr; the report (Markdown) goes to stdout and to ``--out``. Exit code 0
when every event reached every subscriber exactly once, 1 when any was lost or duplicated,
2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import baselines, node_direct, report, rows, stack, stream, worker_paths
from bench.paths import Options, Result
from worker.broker.connections import connect

DEFAULT_OUT = Path(__file__).parent / "results" / "latest.md"
PathRun = Callable[[stack.Services, list[stream.BenchEvent], Options], Awaitable[Result]]
THROUGHPUT: dict[str, PathRun] = {
    "sync-trigger": baselines.sync_trigger,
    "direct-32": baselines.direct,
    rows.NODE_DIRECT: node_direct.node_direct,
    "aio-pika-bare": baselines.aio_pika_bare,
    "worker": worker_paths.worker_live,
    "worker-backlog": worker_paths.worker_backlog,
}
ALL_PATHS = (*THROUGHPUT, "latency")
WORKER_PATHS = ("worker", "worker-backlog", "latency")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the benchmark; return the exit code."""
    args = _parser().parse_args(argv)
    skipped = {name.strip() for value in args.skip for name in value.split(",") if name.strip()}
    if args.no_latency:
        skipped.add("latency")
    unknown = skipped - set(ALL_PATHS)
    if unknown:
        print(f"bench: unknown --skip {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    args.selected = [name for name in ALL_PATHS if name not in skipped]
    try:
        args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    except ValueError:
        print("bench: --worker-env takes KEY=VALUE", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="RabbitMQ -> worker -> Soketi benchmark against direct-trigger baselines.",
    )
    add = parser.add_argument
    add("--events", type=int, default=5000, help="events per throughput path (default 5000)")
    add("--rate", type=float, default=500.0, help="latency run: events/s (default 500)")
    add("--duration", type=float, default=10.0, help="latency run: seconds (default 10)")
    add("--subscribers", type=int, default=1, help="WebSocket subscribers (default 1)")
    add("--payload-size", type=int, default=1024, help="chat/alert data size in bytes")
    add("--runs", type=int, default=1, help="repeat every path; report medians (default 1)")
    add("--skip", action="append", default=[], help=f"skip paths: {', '.join(ALL_PATHS)}")
    add("--no-latency", action="store_true", help="skip the latency run")
    add("--long", type=int, default=0, metavar="N", help="also run N events, RSS every 10k")
    add("--prefetch", type=int, default=200, help="worker PREFETCH_COUNT (default 200)")
    add("--worker-ref", help="run the worker from `git archive REF` (e.g. HEAD), not the tree")
    add(
        "--baseline-ref",
        metavar="REF",
        help="also run every worker path with the worker of `git archive REF`, alternating "
        "with this one in each run (paired before/after)",
    )
    add("--worker-log-level", default="info", help="worker LOG_LEVEL (default info)")
    add("--worker-env", action="append", default=[], metavar="KEY=VALUE", help="worker env")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    workdir = stack.temp_workdir()
    args.load_at_start = os.getloadavg()[0]
    _say(f"bench: starting Soketi and MongoDB on loopback (logs in {workdir})")
    services = await asyncio.to_thread(stack.start_services, workdir)
    ok = False
    try:
        opts = Options(
            subscribers=args.subscribers,
            prefetch=args.prefetch,
            worker_source=stack.worker_source(args.worker_ref, workdir),
            worker_log_level=args.worker_log_level,
            worker_env=args.worker_env,
        )
        baseline = None
        if args.baseline_ref:
            source = stack.worker_source(args.baseline_ref, workdir / "baseline")
            baseline = (args.baseline_ref, replace(opts, worker_source=source))
        results = await _measure(args, services, opts, baseline)
        header = await _header(args, services)
        text = report.render(header, rows.rows(results))
        print(text, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        _say(f"bench: report written to {args.out}")
        ok = all(r.lost == 0 and r.duplicated == 0 for r in results)
        return 0 if ok else 1
    finally:
        with contextlib.suppress(Exception):
            await stack.drop_databases(services)
        services.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"bench: logs kept in {workdir}")


async def _measure(
    args: argparse.Namespace,
    services: stack.Services,
    opts: Options,
    baseline: tuple[str, Options] | None = None,
) -> list[Result]:
    base = stream.build(args.events, payload_bytes=args.payload_size)
    steady = stream.build(
        max(1, int(args.rate * args.duration)), payload_bytes=args.payload_size, ephemeral=True
    )
    results: list[Result] = []
    for run in range(1, args.runs + 1):
        for name in args.selected:
            workers: list[tuple[str, Options]] = [("", opts)]
            if baseline is not None and name in WORKER_PATHS:
                ref, baseline_opts = baseline
                # Alternate which goes first, so a machine that speeds up or slows down
                # during a run favours neither.
                paired = [("", opts), (report.baseline_suffix(ref), baseline_opts)]
                workers = paired if run % 2 else paired[::-1]
            for suffix, worker_opts in workers:
                _say(f"bench: run {run}/{args.runs}: {name}{suffix} …")
                if name == "latency":
                    result = await worker_paths.latency(
                        services, stream.renamed(steady), worker_opts, args.rate
                    )
                else:
                    result = await THROUGHPUT[name](services, stream.renamed(base), worker_opts)
                result.path += suffix
                _say(f"bench:   {_summary(result)}")
                results.append(result)
    if args.long:
        _say(f"bench: long run of {args.long} events …")
        events = stream.build(args.long, payload_bytes=args.payload_size)
        result = await worker_paths.long_run(services, events, opts, say=_say)
        _say(f"bench:   {_summary(result)}")
        results.append(result)
    return results


def _summary(result: Result) -> str:
    rate = f"{result.rate:,.0f}/s" if result.rate else "—"
    e2e = f" (end-to-end {result.e2e_rate:,.0f}/s)" if result.e2e_rate else ""
    return (
        f"{result.path}: {result.events} events, {rate}{e2e}, lost {result.lost}, "
        f"duplicated {result.duplicated}, receipts {result.receipts}"
    )


async def _header(args: argparse.Namespace, services: stack.Services) -> list[str]:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    channels = len(stream.watched_channels())
    source = f"`git archive {args.worker_ref}`" if args.worker_ref else "the work tree"
    if args.baseline_ref:
        source += f", paired with the worker of `git archive {args.baseline_ref}`"
    return [
        f"# bazaar-fanout benchmark, {now}",
        "",
        f"- commit {_git_describe()}; worker run from {source}",
        f"- {args.events:,} events per throughput path (demo marketplace mix, no typing), "
        f"chat/alert data padded to ~{args.payload_size} B; latency: {args.rate:g}/s for "
        f"{args.duration:g} s (typing included)",
        f"- {args.subscribers} WebSocket subscriber(s) on {channels} channels each; "
        f"worker PREFETCH_COUNT={args.prefetch}, LOG_LEVEL={args.worker_log_level}"
        + "".join(f", {k}={v}" for k, v in args.worker_env.items()),
        f"- runs: {args.runs} (medians; lost/duplicated summed)",
        f"- Soketi 1.6.1, RabbitMQ {await _rabbitmq_version(services)}, "
        f"MongoDB: {services.mongo_kind}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, all on loopback",
        f"- 1-minute load average {args.load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (above the core count, other work on the "
        "machine skews absolute numbers)",
    ]


def _git_describe() -> str:
    done = subprocess.run(
        ["git", "-C", str(stack.REPO_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


async def _rabbitmq_version(services: stack.Services) -> str:
    connection = await connect(services.rabbitmq_url, purpose="bench version")
    async with connection:
        properties = connection.transport.connection.server_properties
        version = properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
