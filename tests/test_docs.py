"""The operator docs stay in step with the code: every setting is documented."""

from __future__ import annotations

from pathlib import Path

from worker.config import Settings

ROOT = Path(__file__).parents[1]


def test_readme_and_changelog_list_every_setting() -> None:
    """Each environment variable the worker reads appears in the README table and the changelog."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    names = {name.upper() for name in Settings.model_fields}
    assert {n for n in names if f"`{n}`" not in readme} == set()
    assert {n for n in names if f"`{n}`" not in changelog} == set()


def test_readme_has_the_runbook_anchors_the_alerts_link_to() -> None:
    """The alert rules link to README#alerts and README#dlq-runbook; those headings exist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n### Alerts\n" in readme
    assert "\n### DLQ runbook\n" in readme


def test_readme_metrics_table_lists_every_exported_metric() -> None:
    """Every metric the worker exports has a row in the README's metrics table."""
    from worker.metrics import PREFIX, Metrics

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Metrics") : readme.index("### Alerts")]
    exported = {metric.name for metric in Metrics.create().registry.collect()}
    rows = {name.removeprefix(f"{PREFIX}_") for name in exported}
    missing = {r for r in rows if f"`{r}`" not in table and f"`{r}_total`" not in table}
    assert missing == set()


def test_contract_says_where_a_replay_goes_as_the_code_does() -> None:
    """The contract's DLQ replay row names the worker's own return exchange, as dlq.py uses."""
    contract = (ROOT / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    source = (ROOT / "worker" / "ops" / "dlq.py").read_text(encoding="utf-8")
    assert "{WORKER_QUEUE}.return" in contract
    assert 'get_exchange(f"{settings.worker_queue}.return"' in source
