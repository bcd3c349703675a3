"""The Node publisher's checked-in schemas and pins: fresh from the worker, exact versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from schemas import EVENT_TYPES

ROOT = Path(__file__).parents[2]
NODE = ROOT / "clients" / "node"
REGENERATE = ".venv/bin/python -m worker schemas --out clients/node/schemas"


def test_checked_in_schemas_match_a_fresh_export(tmp_path: Path) -> None:
    """clients/node/schemas/ holds byte for byte what `python -m worker schemas` writes now."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOKETI_", "RABBITMQ_"))}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "schemas", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    checked_in = {p.name: p.read_bytes() for p in (NODE / "schemas").iterdir()}
    assert sorted(checked_in) == sorted(fresh), f"stale file list; run `{REGENERATE}`"
    stale = sorted(name for name in fresh if fresh[name] != checked_in[name])
    assert not stale, f"stale {stale}; run `{REGENERATE}`"
    assert {f"{t}.schema.json" for t in EVENT_TYPES} | {"asyncapi.json"} == set(fresh)


def test_node_dependencies_are_pinned_exactly_and_locked() -> None:
    """package.json pins every dependency to one version, and the lock resolves exactly those."""
    package = json.loads((NODE / "package.json").read_text())
    lock = json.loads((NODE / "package-lock.json").read_text())
    deps = package["dependencies"]
    assert set(deps) == {"amqplib", "ajv", "ajv-formats"}
    for name, version in deps.items():
        assert version[0].isdigit() and all(c.isdigit() or c == "." for c in version), (
            f"{name} is not pinned exactly: {version}"
        )
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"][""]["dependencies"] == deps
    # The outbox takes the caller's own MongoDB Db; the driver is only for the tests.
    dev = package.get("devDependencies", {})
    assert set(dev) <= {"mongodb"}
    for name, version in dev.items():
        assert all(c.isdigit() or c == "." for c in version), f"{name} not pinned: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"][""].get("devDependencies", {}) == dev
    assert package["type"] == "module"
    assert package["scripts"]["test"] == "node --test"
