"""The README's two commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_readme_starts_with_the_two_commands() -> None:
    serve, test = _commands()
    assert serve.endswith("imagegate serve")
    assert "pytest" in (ROOT / test.split()[0]).read_text()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = _commands()
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in lines
