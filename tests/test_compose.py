"""The deployment files agree with each other and with ``worker.config.Settings``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import Settings

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


def test_worker_credentials_have_local_defaults(compose: dict[str, Any]) -> None:
    """Credentials come from compose variables with a fallback, so no .env file is needed."""
    worker = environment(compose["services"]["worker"])
    for name in ("SOKETI_APP_ID", "SOKETI_APP_KEY", "SOKETI_APP_SECRET"):
        assert re.fullmatch(r"\$\{" + name + r":-[^}]+\}", worker[name]), name
    assert re.fullmatch(r"\$\{SOKETI_APP_ID:-[0-9]+\}", worker["SOKETI_APP_ID"])


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


def test_image_carries_the_console_assets() -> None:
    """The image has clients/js (with pusher-js) beside worker/, where the console reads it."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert "RUN npm ci --omit=dev" in dockerfile
    assert "COPY --from=console-assets /app/clients/js/ clients/js/" in dockerfile
    assert "WORKDIR /app" in dockerfile
    assert not {"clients", "clients/js", "clients/js/src"} & set(ignored)
