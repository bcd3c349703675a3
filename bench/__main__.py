"""Entry point: ``python -m bench [options]`` (``make bench BENCH_ARGS=...``)."""

from bench.cli import main

raise SystemExit(main())
