"""The README's test command (scripts/test, which CI runs) lints, checks the
format and the types before the tests, with the settings pyproject.toml holds."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRICT = {"imagegate.contract.*", "imagegate.gateway.*", "imagegate.providers.*", "imagegate.accounting.*"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_scripts_test_runs_ruff_and_mypy_before_pytest_and_stops_on_failure() -> None:
    lines = [line.strip() for line in (ROOT / "scripts" / "test").read_text().splitlines()]
    assert "set -euo pipefail" in lines
    steps = [
        ".venv/bin/ruff check imagegate tests bench scripts",
        ".venv/bin/ruff format --check imagegate tests bench scripts",
        ".venv/bin/mypy",
    ]
    pytest_at = next(i for i, line in enumerate(lines) if line.startswith("exec .venv/bin/python -m pytest"))
    for step in steps:
        assert step in lines and lines.index(step) < pytest_at, step


def test_mypy_is_strict_on_the_four_core_packages_and_reports_unused_ignores() -> None:
    config = _pyproject()
    mypy = config["tool"]["mypy"]
    assert mypy["files"] == ["imagegate"] and mypy["warn_unused_ignores"] is True
    strict = {m for o in mypy["overrides"] if o.get("strict") for m in o["module"]}
    assert strict >= STRICT
    test_extra = " ".join(config["project"]["optional-dependencies"]["test"])
    assert "ruff" in test_extra and "mypy" in test_extra
