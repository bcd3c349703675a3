"""``python -m worker``: the operator command line."""

from worker.cli import main

raise SystemExit(main())
