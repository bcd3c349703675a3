"""A wheel of the checkout, installed in a fresh venv outside it, runs and serves the console.

This is how the Docker image runs the worker: the installed package only, with no repository
folder on ``sys.path`` or in the working directory. The new venv gets the test venv's
dependencies through a ``.pth`` line naming the test venv's site-packages; a folder added that
way does not get its own ``.pth`` files processed, so the checkout's editable-install finder
(``__editable__.bazaar_fanout-*.pth``) stays inactive, which the first test checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from yarl import URL

from devtools.devstack import SoketiServer
from devtools.processes import free_port
from tests.conftest import Names
from tests.integration.test_lifecycle import DRAIN_TIMEOUT_S, WorkerProcess, worker_env

ROOT = Path(__file__).resolve().parents[2]
#: The test venv's site-packages: the installed dependencies (and the checkout's editable finder).
TEST_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
COMMANDS = ["run", "schemas", "publish", "check", "dlq"]
#: Variables that would put something other than the new venv's own paths on ``sys.path``.
PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
PROBE = """
import importlib.util, json, sys
spec = lambda name: importlib.util.find_spec(name)
print(json.dumps({
    "origins": {name: getattr(spec(name), "origin", None)
                for name in ("worker", "handlers", "schemas", "devtools", "tests", "aiohttp")},
    "path": sys.path,
    "editable": sorted(m for m in sys.modules if "__editable__" in m or "distutils_hack" in m),
    "finders": [getattr(f, "__module__", "") for f in sys.meta_path],
}))
"""
TRAVERSALS = (
    "/console/vendor/../../__init__.py",
    "/console/vendor/..%2F..%2F__init__.py",
    "/console/vendor/%2e%2e/%2e%2e/__init__.py",
    "/console/vendor/realtime/..%2F..%2F..%2F__init__.py",
    "/console/static/..%2F__init__.py",
)


@dataclass(frozen=True)
class Installed:
    """A venv outside the checkout with only the wheel installed, and an empty folder to run in."""

    python: Path
    site_packages: Path
    cwd: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the new venv's ``python`` with ``args`` from the empty folder."""
        return _run([str(self.python), *args], cwd=self.cwd, env=self.env)


def _run(
    command: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from ``cwd`` to completion; fail with its output unless it exits 0."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def _clean_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in PATH_VARIABLES}


def _isolation_flags() -> list[str]:
    """``--no-build-isolation`` when this venv meets ``build-system.requires`` and can build a
    wheel itself, else nothing (pip then installs the build requirements from its index)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    try:
        for line in pyproject["build-system"]["requires"]:
            requirement = Requirement(line)
            installed = version(requirement.name)
            if not requirement.specifier.contains(installed, prereleases=True):
                return []
        # setuptools has its own bdist_wheel from 70.1; before that it needs ``wheel``.
        if Version(version("setuptools")) < Version("70.1"):
            version("wheel")
    except PackageNotFoundError:
        return []
    return ["--no-build-isolation"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout in a new venv outside it, dependencies borrowed by ``.pth``."""
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents, f"{base} must be outside the checkout"
    env = _clean_env()
    # setuptools writes build/ and *.egg-info beside setup.py unless told otherwise
    # (DIST_EXTRA_CONFIG): the build leaves the checkout untouched.
    extra_config = base / "setuptools.cfg"
    extra_config.write_text(
        f"[build]\nbuild_base = {base / 'build'}\n[egg_info]\negg_base = {base}\n",
        encoding="utf-8",
    )
    dist = base / "dist"
    build = ["wheel", "--no-deps", *_isolation_flags(), "-w", str(dist), str(ROOT)]
    _run(
        [sys.executable, "-m", "pip", *build],
        env={**env, "DIST_EXTRA_CONFIG": str(extra_config)},
        cwd=base,
    )
    (wheel,) = dist.glob("bazaar_fanout-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env, cwd=base)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run(
        [*pip, "install", "--no-deps", "--no-index", str(wheel)],
        env=env,
        cwd=base,
    )
    site_packages = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=env,
            cwd=base,
        ).stdout.strip()
    )
    # Added after the install, so pip never sees the checkout's own metadata in there.
    (site_packages / "test-venv-dependencies.pth").write_text(
        f"{TEST_SITE_PACKAGES}\n", encoding="utf-8"
    )
    cwd = base / "empty"
    cwd.mkdir()
    return Installed(python, site_packages, cwd, env)


def test_imports_come_from_the_wheel_and_never_from_the_checkout(installed: Installed) -> None:
    """``worker`` resolves into the new venv; no checkout folder or editable finder is active."""
    done = installed.run("-c", "import worker; print(worker.__file__)")
    assert Path(done.stdout.strip()).is_relative_to(installed.site_packages)

    probe = json.loads(installed.run("-c", PROBE).stdout)
    for package in ("worker", "handlers", "schemas"):
        assert Path(probe["origins"][package]).is_relative_to(installed.site_packages), package
    assert probe["origins"]["devtools"] is None
    assert probe["origins"]["tests"] is None
    assert Path(probe["origins"]["aiohttp"]).is_relative_to(TEST_SITE_PACKAGES)
    in_checkout = {entry for entry in probe["path"] if entry and ROOT in Path(entry).parents}
    assert in_checkout <= {str(TEST_SITE_PACKAGES)}
    assert str(ROOT) not in probe["path"]
    # The test venv's own .pth files (editable finder, distutils hack) were not processed.
    assert probe["editable"] == []
    assert [finder for finder in probe["finders"] if "__editable__" in finder] == []


def test_cli_lists_exactly_the_operator_commands(installed: Installed) -> None:
    """``python -m worker --help`` from the wheel lists run, schemas, publish, check and dlq."""
    help_text = installed.run("-m", "worker", "--help").stdout
    section = help_text.split("COMMAND\n", 2)[-1].split("\n\n", 1)[0]
    assert re.findall(r"^    (\S+)", section, re.MULTILINE) == COMMANDS


async def test_installed_worker_serves_the_console_and_stops_cleanly(
    installed: Installed,
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: Names,
    tmp_path: Path,
) -> None:
    """The installed worker serves the console and its vendored assets, refuses path traversal
    and exits 0 on SIGTERM."""
    port = free_port()
    env = worker_env(names, rabbitmq_url, mongo_url, soketi, HTTP_PORT=str(port))
    env = {name: value for name, value in env.items() if name not in PATH_VARIABLES}
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(installed.python),
            "-m",
            "worker",
            "run",
            env=env,
            cwd=installed.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as http:
            worker = WorkerProcess(process, port, log_path, http)
            await worker.wait(lambda: _status(http, port, "/healthz"), 20, "/healthz to answer")

            vendor = installed.site_packages / "worker" / "web" / "console" / "static" / "vendor"
            for path in (
                "/console",
                "/console/static/console.js",
                "/console/vendor/pusher.min.js",
                "/console/vendor/realtime/index.js",
            ):
                status, body = await _get(http, port, path)
                assert (status, bool(body)) == (200, True), f"{path}:\n{worker.log_tail()}"
                if path.startswith("/console/vendor/"):
                    assert body == (vendor / path.removeprefix("/console/vendor/")).read_bytes()
            for path in TRAVERSALS:
                status, _ = await _get(http, port, path)
                assert status == 404, path

            await worker.wait_ready(30)
            code, _ = await worker.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, worker.log_tail()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, bytes]:
    """``GET path`` exactly as written (no client-side ``..`` normalisation): status and body."""
    url = URL(f"http://127.0.0.1:{port}{path}", encoded=True)
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.read()


async def _status(http: aiohttp.ClientSession, port: int, path: str) -> int | None:
    """The status of ``GET path``, or ``None`` while nothing answers on the port."""
    try:
        status, _ = await _get(http, port, path)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return status
