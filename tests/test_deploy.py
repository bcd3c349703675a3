"""The monitoring files in ``deploy/`` parse, agree with each other and query only real metrics.

The names and label values the dashboard and the alert rules use are checked against a fresh
``worker.metrics.Metrics`` registry and the closed label sets of the worker, so renaming a
metric or a label without updating ``deploy/`` fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from worker.broker.sampler import queue_labels
from worker.broker.topology import Topology, tier_label
from worker.config import Settings
from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bazaar-fanout.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

JOB = "bazaar-fanout"
SOKETI_JOB = "soketi"
# Soketi's metrics server in docker-compose.yml (SOKETI_METRICS_SERVER_PORT).
SOKETI_METRICS_PORT = "9601"
OPS_SERVICES = ("prometheus", "grafana")
EXPECTED_ALERTS = {
    "FanoutDLQGrowing",
    "FanoutEventAgeHigh",
    "FanoutCircuitOpen",
    "FanoutNoConsumer",
    "FanoutWorkerDown",
    "FanoutBacklogGrowing",
    "FanoutEventLoopBlocked",
    "FanoutSoketiDown",
    "FanoutSoketiHttpApiErrors",
    "FanoutSoketiNoConnections",
}
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus adds to every scraped series, and the one each histogram bucket carries.
TARGET_LABELS = frozenset({"instance", "job"})
# Prometheus's own per-target metric, the only non-worker series the rules may use.
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
# The soketi_* samples the deploy files may use, with their labels: Soketi 1.6's prometheus
# driver (app_id, port) and prom-client's default process metrics under the soketi_ prefix.
# tests/integration/test_soketi_metrics.py checks every name here, and every soketi_* name
# in deploy/, against the /metrics output of a running Soketi.
_SOKETI_APP = frozenset({"app_id", "port"})
SOKETI_SERIES: dict[str, frozenset[str]] = {
    **{
        f"soketi_{name}": _SOKETI_APP
        for name in (
            "connected",
            "new_connections_total",
            "new_disconnections_total",
            "socket_received_bytes",
            "socket_transmitted_bytes",
            "ws_messages_received_total",
            "ws_messages_sent_total",
            "http_received_bytes",
            "http_transmitted_bytes",
            "http_calls_received_total",
        )
    },
    "soketi_process_cpu_seconds_total": frozenset(),
    "soketi_process_resident_memory_bytes": frozenset(),
}

METRIC_NAME = re.compile(r"\bbazaar_fanout_[a-z_]+\b")
SOKETI_METRIC_NAME = re.compile(r"\bsoketi_[a-z_]+\b")
SELECTOR = re.compile(r"\b(bazaar_fanout_[a-z_]+|soketi_[a-z_]+|up)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def closed_label_values() -> dict[str, set[str]]:
    """Every value the worker can give the labels whose sets are closed, per label name."""
    delays = Settings.model_fields["retry_delays_s"].default
    tiers = {tier_label(delay) for delay in delays}
    return {
        "outcome": {"delivered", "duplicate", "dropped", "retried", "dead_lettered", "requeued"},
        "downstream": {"soketi", "mongodb"},
        "queue": {"main", "dlq"} | {f"retry_{tier}" for tier in tiers},
        "tier": tiers,
        "status_class": {f"{digit}xx" for digit in range(1, 6)},
        "kind": {"connection", "consumer"},
    }


def sample_names(family: Metric) -> set[str]:
    """The names under which one collected metric family is exposed to Prometheus."""
    if family.type == "counter":
        return {f"{family.name}_total"}
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family.name}


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    """Exposed sample name -> its label names, for every metric of a fresh ``Metrics``."""
    metrics = Metrics.create()
    families = {family.name: family for family in metrics.registry.collect()}
    catalogue: dict[str, frozenset[str]] = {}
    for field_name in Metrics.__dataclass_fields__:
        metric = getattr(metrics, field_name)
        if not isinstance(metric, MetricWrapperBase):
            continue
        (described,) = metric.describe()
        family = families[described.name]
        labels = frozenset(metric._labelnames)
        for name in sample_names(family):
            catalogue[name] = labels | {"le"} if name.endswith("_bucket") else labels
    assert set(catalogue) == set().union(*(sample_names(f) for f in families.values()))
    return catalogue


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The parsed Grafana dashboard."""
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def load_yaml(path: Path) -> dict[str, Any]:
    """One parsed YAML file, which must be a mapping."""
    with path.open(encoding="utf-8") as file:
        document = yaml.safe_load(file)
    assert isinstance(document, dict), path
    return document


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    """The parsed Prometheus alert rules."""
    return load_yaml(ALERTS)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed ``docker-compose.yml``."""
    return load_yaml(ROOT / "docker-compose.yml")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(PromQL, legend format) of every panel target and every query variable."""
    queries = [
        (target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append((query["query"] if isinstance(query, dict) else query, ""))
    return queries


def alert_rules(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of every group."""
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def all_exprs(dashboard: dict[str, Any], alerts: dict[str, Any]) -> list[str]:
    """Every PromQL expression in the dashboard and the alert rules."""
    return [expr for expr, _ in dashboard_queries(dashboard)] + [
        str(rule["expr"]) for rule in alert_rules(alerts)
    ]


def labels_in_scope(expr: str, exported: dict[str, frozenset[str]]) -> set[str]:
    """The label names the series an expression selects can carry."""
    scope = set(TARGET_LABELS) | {"le"}
    for name in METRIC_NAME.findall(expr):
        scope |= exported.get(name, frozenset())
    for name in SOKETI_METRIC_NAME.findall(expr):
        scope |= SOKETI_SERIES.get(name, frozenset())
    return scope


# --- parsing and structure -------------------------------------------------------------


def test_dashboard_parses_with_identity(dashboard: dict[str, Any]) -> None:
    """The dashboard is JSON with the fixed uid, a recent schema version and a title."""
    assert dashboard["uid"] == "bazaar-fanout"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    """Panel ids are unique, panels fit the 24-column grid and each data panel has a query."""
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert "unit" in panel["fieldConfig"]["defaults"], panel["title"]


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    """Panels and targets query the datasource variable, whose default is the provisioned uid."""
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = f"${{{variable['name']}}}"
    provisioned = {source["uid"] for source in load_yaml(DATASOURCES)["datasources"]}
    assert variable["current"]["value"] in provisioned
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        sources = [panel["datasource"]] + [target["datasource"] for target in panel["targets"]]
        assert all(source == {"type": "prometheus", "uid": reference} for source in sources)


def test_alert_rules_have_the_expected_structure(alerts: dict[str, Any]) -> None:
    """Each rule has alert, expr, a ``for`` duration, a severity, summary, description, runbook."""
    assert alerts["groups"] and all(group["name"] and group["rules"] for group in alerts["groups"])
    for rule in alert_rules(alerts):
        assert re.fullmatch(r"Fanout[A-Za-z]+", rule["alert"])
        assert str(rule["expr"]).strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert re.fullmatch(r"README\.md#[a-z0-9-]+", annotations["runbook_url"]), rule["alert"]


def test_expected_alerts_exist_once(alerts: dict[str, Any]) -> None:
    """The alerts the operators were promised are all defined, and no alert name repeats."""
    names = [rule["alert"] for rule in alert_rules(alerts)]
    assert len(names) == len(set(names))
    assert set(names) >= EXPECTED_ALERTS


def test_dlq_alerts_point_to_the_dlq_runbook(alerts: dict[str, Any]) -> None:
    """Alerts about the dead-letter queue link the DLQ runbook, the others the alerts section."""
    for rule in alert_rules(alerts):
        expected = "dlq-runbook" if 'queue="dlq"' in rule["expr"] else "alerts"
        assert rule["annotations"]["runbook_url"] == f"README.md#{expected}", rule["alert"]


def test_prometheus_config_scrapes_the_worker_and_loads_the_rules(
    compose: dict[str, Any],
) -> None:
    """prometheus.yml loads alerts.yml and scrapes the worker's /metrics on its compose port."""
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == [ALERTS.name]
    assert (PROMETHEUS.parent / config["rule_files"][0]).is_file()
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port = compose["services"]["worker"]["environment"]["HTTP_PORT"]
    assert [target for sc in job["static_configs"] for target in sc["targets"]] == [
        f"worker:{port}"
    ]


def test_prometheus_config_scrapes_soketi_metrics(compose: dict[str, Any]) -> None:
    """prometheus.yml scrapes Soketi's metrics server on the port compose enables it on."""
    config = load_yaml(PROMETHEUS)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == SOKETI_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    env = compose["services"]["soketi"]["environment"]
    assert str(env["SOKETI_METRICS_ENABLED"]) in ("1", "true")
    assert str(env["SOKETI_METRICS_SERVER_PORT"]) == SOKETI_METRICS_PORT
    assert [target for sc in job["static_configs"] for target in sc["targets"]] == [
        f"soketi:{SOKETI_METRICS_PORT}"
    ]


def test_alerts_watch_the_scraped_jobs(dashboard: dict[str, Any], alerts: dict[str, Any]) -> None:
    """Every ``job=`` selector in the rules and the dashboard names a job prometheus.yml scrapes,
    and the rules watch both: the worker and Soketi."""
    scraped = {job["job_name"] for job in load_yaml(PROMETHEUS)["scrape_configs"]}
    rule_jobs = {
        value
        for rule in alert_rules(alerts)
        for value in re.findall(r'job="([^"]*)"', rule["expr"])
    }
    assert rule_jobs == {JOB, SOKETI_JOB} == scraped
    for expr in all_exprs(dashboard, alerts):
        assert set(re.findall(r'job="([^"]*)"', expr)) <= scraped, expr


def test_soketi_alerts_exist(alerts: dict[str, Any]) -> None:
    """Soketi down is ``up{job="soketi"} == 0``; a rule watches Soketi's HTTP API and one its
    connections against the worker's deliveries."""
    rules = {rule["alert"]: " ".join(str(rule["expr"]).split()) for rule in alert_rules(alerts)}
    assert rules["FanoutSoketiDown"].startswith(f'up{{job="{SOKETI_JOB}"}} == 0')
    assert "soketi_http_calls_received_total" in rules["FanoutSoketiHttpApiErrors"]
    no_connections = rules["FanoutSoketiNoConnections"]
    assert "soketi_connected" in no_connections
    assert 'bazaar_fanout_messages_total{outcome="delivered"}' in no_connections


# --- metric names and labels -------------------------------------------------------------


def test_metric_names_are_exported(
    dashboard: dict[str, Any], alerts: dict[str, Any], exported: dict[str, frozenset[str]]
) -> None:
    """Every ``bazaar_fanout_*`` name in the dashboard and rules is a sample the worker exposes."""
    referenced = {
        name for expr in all_exprs(dashboard, alerts) for name in METRIC_NAME.findall(expr)
    }
    assert referenced, "no worker metric referenced at all"
    assert referenced - set(exported) == set()


def test_soketi_metric_names_are_known(dashboard: dict[str, Any], alerts: dict[str, Any]) -> None:
    """Every ``soketi_*`` name in the dashboard and rules is one Soketi exports (SOKETI_SERIES),
    and every Soketi selector is restricted to the soketi job."""
    referenced = {
        name for expr in all_exprs(dashboard, alerts) for name in SOKETI_METRIC_NAME.findall(expr)
    }
    assert referenced - set(SOKETI_SERIES) == set()
    for expr in all_exprs(dashboard, alerts):
        for metric, body in SELECTOR.findall(expr):
            if metric.startswith("soketi_"):
                assert f'job="{SOKETI_JOB}"' in body, expr


def test_dashboard_has_a_soketi_row(dashboard: dict[str, Any]) -> None:
    """A "Soketi server" row shows connections, messages sent and received, HTTP API calls."""
    titles = [panel["title"] for panel in dashboard["panels"]]
    start = titles.index("Soketi server")
    row = []
    for panel in dashboard["panels"][start + 1 :]:
        if panel["type"] == "row":
            break
        row.extend(target["expr"] for target in panel.get("targets", []))
    queried = " ".join(row)
    for name in (
        "soketi_connected",
        "soketi_ws_messages_sent_total",
        "soketi_ws_messages_received_total",
        "soketi_http_calls_received_total",
    ):
        assert name in queried, name


def test_every_exported_metric_is_on_the_dashboard(
    dashboard: dict[str, Any], exported: dict[str, frozenset[str]]
) -> None:
    """Each metric family the worker exports is queried by at least one dashboard panel."""
    queried = " ".join(expr for expr, _ in dashboard_queries(dashboard))
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    assert {family for family in families if family not in queried} == set()


def test_selectors_use_known_labels_and_closed_values(
    dashboard: dict[str, Any], alerts: dict[str, Any], exported: dict[str, frozenset[str]]
) -> None:
    """Matchers name labels the metric has; closed-set labels match a value the worker sets."""
    closed = closed_label_values()
    known = {**exported, **PROMETHEUS_SERIES, **SOKETI_SERIES}
    checked = 0
    for expr in all_exprs(dashboard, alerts):
        for metric, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                assert label in known[metric] | TARGET_LABELS, (metric, label)
                if label not in closed or "$" in value:
                    continue
                checked += 1
                if op in ("=", "!="):
                    assert value in closed[label], (expr, label, value)
                else:
                    assert any(re.fullmatch(value, v) for v in closed[label]), (expr, value)
    assert checked, "no closed-set label value was checked"


def test_grouping_and_legends_use_labels_in_scope(
    dashboard: dict[str, Any], alerts: dict[str, Any], exported: dict[str, frozenset[str]]
) -> None:
    """``by``/``without`` labels and ``{{label}}`` legends name labels the queried metrics carry."""
    queries = dashboard_queries(dashboard) + [(str(r["expr"]), "") for r in alert_rules(alerts)]
    for expr, legend in queries:
        scope = labels_in_scope(expr, exported)
        grouped = {
            label.strip()
            for clause in GROUPING.findall(expr)
            for label in clause.split(",")
            if label.strip()
        }
        assert grouped <= scope, (expr, grouped - scope)
        assert set(LEGEND_LABEL.findall(legend)) <= scope, (expr, legend)


def test_closed_sets_match_the_worker() -> None:
    """The queue labels the sampler derives from the default settings are the closed set here."""
    delays = Settings.model_fields["retry_delays_s"].default
    topology = Topology(exchange="x", queue="q", retry_delays_s=delays)
    assert set(queue_labels(topology).values()) == closed_label_values()["queue"]


# --- compose ops profile -----------------------------------------------------------------


@pytest.mark.parametrize("name", OPS_SERVICES)
def test_ops_service_in_profile_with_healthcheck(compose: dict[str, Any], name: str) -> None:
    """Prometheus and Grafana run only in the ``ops`` profile, from pinned images, with a check."""
    service = compose["services"][name]
    assert service["profiles"] == ["ops"]
    image, _, tag = service["image"].rpartition(":")
    assert image and tag and tag != "latest"
    test = service["healthcheck"]["test"]
    assert test and test != ["NONE"]


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    """No service in the compose file, default or ops profile, lacks a healthcheck."""
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"] not in (None, [], ["NONE"]), name


def test_default_services_stay_outside_profiles(compose: dict[str, Any]) -> None:
    """A plain ``docker compose up`` still starts exactly the four application services."""
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"rabbitmq", "mongodb", "soketi", "worker"}


def test_ops_services_depend_on_the_worker_chain(compose: dict[str, Any]) -> None:
    """Prometheus starts after the worker, Grafana after a healthy Prometheus."""
    services = compose["services"]
    assert "worker" in services["prometheus"]["depends_on"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's relative bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


@pytest.mark.parametrize("name", OPS_SERVICES)
def test_ops_bind_mounts_exist_on_disk(compose: dict[str, Any], name: str) -> None:
    """Every host path the ops services mount is a file or folder in the repository."""
    mounts = bind_mounts(compose["services"][name])
    assert mounts
    assert [str(path) for path in mounts.values() if not path.exists()] == []


def test_prometheus_mounts_its_config_and_rules(compose: dict[str, Any]) -> None:
    """The folder mounted at /etc/prometheus holds prometheus.yml and alerts.yml."""
    mounts = bind_mounts(compose["services"]["prometheus"])
    assert mounts["/etc/prometheus"] == PROMETHEUS.parent.resolve()


def test_grafana_mounts_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    """Grafana gets the provisioning folder and the dashboards at the path the provider reads."""
    mounts = bind_mounts(compose["services"]["grafana"])
    assert mounts["/etc/grafana/provisioning"] == DATASOURCES.parent.parent.resolve()
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent.resolve()


def test_grafana_datasource_points_at_the_prometheus_service(compose: dict[str, Any]) -> None:
    """The provisioned datasource is the compose Prometheus on its container port."""
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    ports = compose["services"]["prometheus"]["ports"]
    assert any(str(port).endswith(":9090") for port in ports)
