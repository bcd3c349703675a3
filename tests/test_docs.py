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
