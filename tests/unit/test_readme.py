"""The README's two commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

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


# -- what the README tells a newcomer is what the code does ------------------

README = (ROOT / "README.md").read_text()


def test_the_python_version_needed_is_stated_and_matches_the_package() -> None:
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires is not None
    assert f"Python {requires.group(1)} or newer" in README.split("```", 1)[0]  # before the first command


def test_the_sdk_install_names_an_environment() -> None:
    assert ".venv/bin/pip install openai" in README
    assert "`pip install openai`)" not in README  # the bare form, with no environment named


def _readme_cli_lines() -> list[list[str]]:
    lines = []
    for block in re.findall(r"```sh\n(.+?)\n```", README, re.S):
        for line in block.splitlines():
            command = line.rsplit("&& ", 1)[-1]  # the first command: `... && .venv/bin/imagegate serve`
            if command.startswith(("imagegate ", ".venv/bin/imagegate ")):
                lines.append(shlex.split(command, comments=True)[1:])
    return lines


def test_every_imagegate_command_in_the_readme_exists_with_its_options() -> None:
    import click

    from imagegate.cli import main

    lines = _readme_cli_lines()
    assert ["keys", "create", "--name", "alice", "--team", "design", "--budget", "1", "--rpm", "10"] in lines
    assert ["serve"] in lines
    for words in lines:
        command: click.Command = main
        rest = list(words)
        while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            name = rest.pop(0)
            assert name in command.commands, f"imagegate {' '.join(words)}: no command {name!r}"
            command = command.commands[name]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in rest:
            if word.startswith("--"):
                assert word in options, f"imagegate {' '.join(words)}: no option {word}"


def test_the_documented_default_models_are_what_requests_without_a_model_get() -> None:
    from imagegate.contract import catalog
    from imagegate.contract.validate import ModelDirectory
    from imagegate.errors import InvalidRequestError

    assert "`dall-e-2` for\n  generations and variations, `gpt-image-1.5` for edits" in README
    rules = {name: catalog.lookup(name) for name in ("dall-e-2", "gpt-image-1.5", "dall-e-3")}
    directory = ModelDirectory(rules)  # type: ignore[arg-type]
    assert directory.resolve(None, "generations")[0] == "dall-e-2"
    assert directory.resolve(None, "variations")[0] == "dall-e-2"
    assert directory.resolve(None, "edits")[0] == "gpt-image-1.5"
    assert ModelDirectory(rules, default_model="dall-e-3").resolve(None, "generations")[0] == "dall-e-3"
    assert ModelDirectory({"dall-e-3": rules["dall-e-3"]}).resolve(None, "generations")[0] == "dall-e-3"  # type: ignore[dict-item]
    with pytest.raises(InvalidRequestError, match="no default model"):
        ModelDirectory({"dall-e-3": rules["dall-e-3"], "gpt-image-1": catalog.lookup("gpt-image-1")}).resolve(None, "edits")  # type: ignore[dict-item]


def test_the_docs_link_only_inside_the_repository() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert "shared/" not in text, f"{page.name} points at shared/, outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
            assert (page.parent / target).exists(), f"{page.name}: {target} does not exist"
