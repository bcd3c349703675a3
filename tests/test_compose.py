"""The deployment files agree with each other and with ``worker.config.Settings``."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import Settings
from worker.web.presence import WEBHOOK_PATH

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("rabbitmq", "mongodb", "soketi", "worker")
DEPENDENCIES = ("rabbitmq", "mongodb", "soketi")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed ``docker-compose.yml``."""
    with (ROOT / "docker-compose.yml").open(encoding="utf-8") as file:
        document = yaml.safe_load(file)
    assert isinstance(document, dict)
    return document


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping, whether written as a mapping or a list."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def test_compose_has_no_version_key(compose: dict[str, Any]) -> None:
    """The file follows the Compose spec, which has no top-level ``version`` key."""
    assert "version" not in compose


@pytest.mark.parametrize("name", SERVICES)
def test_service_exists_with_healthcheck(compose: dict[str, Any], name: str) -> None:
    """Each of the four services is defined and has a healthcheck command."""
    service = compose["services"][name]
    test = service["healthcheck"]["test"]
    assert test and test != ["NONE"]


def test_worker_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    """The worker starts only once RabbitMQ, MongoDB and Soketi report healthy."""
    depends_on = compose["services"]["worker"]["depends_on"]
    assert {name: depends_on[name]["condition"] for name in DEPENDENCIES} == {
        name: "service_healthy" for name in DEPENDENCIES
    }


def test_worker_environment_names_are_settings_fields(compose: dict[str, Any]) -> None:
    """Every variable set on the worker is a ``Settings`` field, so none is silently ignored."""
    known = {name.upper() for name in Settings.model_fields}
    unknown = set(environment(compose["services"]["worker"])) - known
    assert unknown == set()


def test_worker_sets_every_required_setting(compose: dict[str, Any]) -> None:
    """The worker sets every ``Settings`` field that has no default, so it can start."""
    required = {
        name.upper() for name, field in Settings.model_fields.items() if field.is_required()
    }
    assert required <= set(environment(compose["services"]["worker"]))


@pytest.mark.parametrize("part", ["ID", "KEY", "SECRET"])
def test_worker_and_soketi_share_credentials(compose: dict[str, Any], part: str) -> None:
    """The worker's ``SOKETI_APP_*`` use the same expression as Soketi's default app."""
    worker = environment(compose["services"]["worker"])
    soketi = environment(compose["services"]["soketi"])
    assert worker[f"SOKETI_APP_{part}"] == soketi[f"SOKETI_DEFAULT_APP_{part}"]


def test_worker_public_app_values_have_local_defaults(compose: dict[str, Any]) -> None:
    """The app id and the (public) key fall back to local values; the secret does not."""
    worker = environment(compose["services"]["worker"])
    for name in ("SOKETI_APP_ID", "SOKETI_APP_KEY"):
        assert re.fullmatch(r"\$\{" + name + r":-[^}]+\}", worker[name]), name
    assert re.fullmatch(r"\$\{SOKETI_APP_ID:-[0-9]+\}", worker["SOKETI_APP_ID"])


SECRETS = ("SOKETI_APP_SECRET", "AUTH_JWT_SECRET")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) in a parsed YAML document: comments are gone."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def compose_variables(compose: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """Each ``${VAR...}`` compose interpolates -> the (operator, argument) pairs it is used with."""
    found: dict[str, set[tuple[str, str]]] = {}
    for text in strings(compose):
        for name, op, argument in VARIABLE.findall(text.replace("$$", "")):
            found.setdefault(name, set()).add((op, argument))
    return found


def env_example() -> dict[str, str]:
    """``.env.example`` as NAME -> value (comments and blank lines skipped)."""
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
        values[name] = value
    return values


def test_secrets_fail_loudly_when_unset(compose: dict[str, Any]) -> None:
    """Each secret is ``${VAR:?message}`` everywhere it is used: no committed fallback, and a
    missing .env stops ``docker compose up`` with a message saying what to set."""
    variables = compose_variables(compose)
    for name in SECRETS:
        assert variables[name], name
        for op, message in variables[name]:
            assert op == ":?" and ".env" in message, (name, op, message)


def test_worker_has_the_browser_side_on(compose: dict[str, Any]) -> None:
    """The worker gets an auth mode with its secret, the forward URL and the CORS origins."""
    worker = environment(compose["services"]["worker"])
    mode = VARIABLE.fullmatch(worker["AUTH_MODE"])
    assert mode is not None and mode.group(1) == "AUTH_MODE"
    assert mode.group(3) in ("jwt", "forward")
    for name in ("AUTH_JWT_SECRET", "AUTH_FORWARD_URL"):
        variable = VARIABLE.fullmatch(worker[name])
        assert variable is not None and variable.group(1) == name
    origins = VARIABLE.fullmatch(worker["CORS_ALLOWED_ORIGINS"])
    assert origins is not None and origins.group(1) == "CORS_ALLOWED_ORIGINS"
    # The local defaults are valid setting values.
    settings = Settings.model_validate(
        {"soketi_app_id": "1", "soketi_app_key": "k", "soketi_app_secret": "s"}
        | {"cors_allowed_origins": origins.group(3), "auth_mode": mode.group(3)},
    )
    assert settings.cors_allowed_origins and settings.auth_mode == mode.group(3)


def test_soketi_webhooks_reach_the_worker(compose: dict[str, Any]) -> None:
    """Soketi's app posts channel_occupied and channel_vacated to the worker's
    ``/webhooks/soketi`` on its HTTP port, as Soketi parses the variable (JSON)."""
    soketi = environment(compose["services"]["soketi"])
    worker = environment(compose["services"]["worker"])
    (webhook,) = json.loads(soketi["SOKETI_DEFAULT_APP_WEBHOOKS"])
    assert webhook["url"] == f"http://worker:{worker['HTTP_PORT']}{WEBHOOK_PATH}"
    assert set(webhook["event_types"]) == {"channel_occupied", "channel_vacated"}


def test_soketi_metrics_server_is_on(compose: dict[str, Any]) -> None:
    """Soketi serves Prometheus metrics on 9601, reachable on the compose network."""
    soketi = compose["services"]["soketi"]
    env = environment(soketi)
    assert env["SOKETI_METRICS_ENABLED"] in ("1", "true")
    assert env["SOKETI_METRICS_SERVER_PORT"] == "9601"
    assert "9601" in [str(port).split(":")[-1] for port in soketi.get("expose", [])]


def test_prometheus_scrapes_the_worker_and_soketi(compose: dict[str, Any]) -> None:
    """deploy/prometheus/prometheus.yml scrapes the worker's HTTP port and Soketi's metrics."""
    with (ROOT / "deploy" / "prometheus" / "prometheus.yml").open(encoding="utf-8") as file:
        config = yaml.safe_load(file)
    targets = {
        job["job_name"]: [target for sc in job["static_configs"] for target in sc["targets"]]
        for job in config["scrape_configs"]
    }
    worker_port = environment(compose["services"]["worker"])["HTTP_PORT"]
    metrics_port = environment(compose["services"]["soketi"])["SOKETI_METRICS_SERVER_PORT"]
    assert targets["bazaar-fanout"] == [f"worker:{worker_port}"]
    assert targets["soketi"] == [f"soketi:{metrics_port}"]


def test_every_compose_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    """An operator who copies .env.example to .env has a line for every ``${VAR}``."""
    assert set(compose_variables(compose)) - set(env_example()) == set()


def test_env_example_commits_no_secret() -> None:
    """Secrets in .env.example are placeholders; nothing in it looks like a real credential."""
    values = env_example()
    for name in SECRETS:
        assert values[name] == "change-me", name
    for name, value in values.items():
        if re.search(r"SECRET|PASSWORD|TOKEN", name):
            assert value in ("", "change-me"), name
        # No long random-looking string (hex, base64, JWT) anywhere.
        assert not re.search(r"[A-Za-z0-9+/_=.-]{24,}", value) or "://" in value, name
        assert not re.search(r"[0-9a-f]{16,}", value), name


def test_stop_grace_period_exceeds_drain_timeout(compose: dict[str, Any]) -> None:
    """Docker waits longer than the worker's drain before it kills the container."""
    worker = compose["services"]["worker"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace is not None
    default_s = Settings.model_fields["drain_timeout_s"].default
    drain_s = float(environment(worker).get("DRAIN_TIMEOUT_S", default_s))
    assert int(grace.group(1)) > drain_s


def test_procfile_runs_the_worker() -> None:
    """The Procfile's only process is ``worker: python -m worker run``."""
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    assert lines == ["worker: python -m worker run"]


def test_dockerfile_cmd_runs_the_worker() -> None:
    """The image's default command is ``python -m worker run`` in exec form."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    commands = [line[len("CMD ") :] for line in text.splitlines() if line.startswith("CMD ")]
    assert [json.loads(command) for command in commands] == [["python", "-m", "worker", "run"]]


@dataclass
class Stage:
    """One ``FROM`` stage of the Dockerfile: its name and its instructions, continuations joined."""

    name: str | None
    instructions: list[tuple[str, str]]

    def args(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction in this stage, in order."""
        return [args for found, args in self.instructions if found == keyword]

    def copies(self) -> list[tuple[dict[str, str], list[str]]]:
        """Each ``COPY``/``ADD`` as (its ``--flag=value`` options, its sources)."""
        found = []
        for keyword, args in self.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            words = args.split()
            flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
            paths = [word for word in words if not word.startswith("--")]
            found.append((flags, paths[:-1]))
        return found


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages, comments dropped and ``\\`` continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            stages.append(Stage(words[2] if named else None, []))
        else:
            stages[-1].instructions.append((keyword.upper(), " ".join(args.split())))
    return stages


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (or a folder above it) out of the context.

    fnmatch's ``*`` also crosses ``/``, so this errs towards "ignored": a pass is safe.
    """
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(
            fnmatch.fnmatchcase(candidate, glob)
            or (glob.startswith("**/") and fnmatch.fnmatchcase(candidate.split("/")[-1], glob[3:]))
            for candidate in candidates
        ):
            ignored = not negated
    return ignored


def test_image_build_vendors_the_console_assets() -> None:
    """npm installs pusher-js in the node stage and the build stage installs the package with
    setup.py beside clients/js, so setup.py copies the assets into the installed package."""
    node, build, _ = dockerfile_stages()
    assert node.name == "console-assets"
    assert any(run.startswith("npm ci --omit=dev") for run in node.args("RUN"))
    assert ({}, ["clients/js/src/"]) in node.copies()
    assert build.name == "build"
    sources = {source for _, paths in build.copies() for source in paths}
    assert {"pyproject.toml", "setup.py", "worker/", "handlers/", "schemas/"} <= sources
    from_node = [paths for flags, paths in build.copies() if flags.get("from") == node.name]
    assert from_node == [[f"{build.args('WORKDIR')[0]}/clients/js/"]]
    assert any(re.search(r"pip install .* \.$", run) for run in build.args("RUN"))
    needed = [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "requirements.lock",
        "worker/cli.py",
        "handlers/__init__.py",
        "schemas/__init__.py",
        "clients/js/package.json",
        "clients/js/package-lock.json",
        "clients/js/src/index.js",
    ]
    assert [path for path in needed if dockerignored(path)] == []
    assert dockerignored("worker/web/console/static/vendor/pusher.min.js")


def test_runtime_image_holds_only_the_installed_package() -> None:
    """The final stage copies only the build stage's venv: no worker/, clients/js or other
    source reaches the image, so ``python -m worker`` imports the installed package."""
    *_, build, runtime = dockerfile_stages()
    assert runtime.name is None
    assert runtime.copies() == [({"from": build.name or ""}, ["/opt/venv/"])]
    assert any(
        env.startswith("PATH=/opt/venv/bin:") for env in " ".join(runtime.args("ENV")).split()
    )
    workdirs = runtime.args("WORKDIR")
    assert len(workdirs) == 1
    assert workdirs[0] not in build.args("WORKDIR")


def test_runtime_image_runs_unprivileged_with_healthcheck_and_sigterm() -> None:
    """The worker runs as a non-root user, with a HEALTHCHECK and SIGTERM as the stop signal."""
    runtime = dockerfile_stages()[-1]
    assert runtime.args("USER") == ["fanout"]
    assert len(runtime.args("HEALTHCHECK")) == 1
    assert " CMD [" in runtime.args("HEALTHCHECK")[0]
    assert runtime.args("STOPSIGNAL") == ["SIGTERM"]
