"""The `telemon` command line."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from telemon import __version__
from telemon.cli import build_cli


@pytest.fixture(scope="module")
def cli():
    return build_cli()


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_version(cli):
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"telemon, version {__version__}\n"


def test_every_command_has_help(cli):
    commands = list(all_commands(cli))
    assert {("plugins",), ("config", "check"), ("plugin", "new")} <= set(commands)
    for path in commands:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage: " in result.output
        summary = result.output.split("\n\n")[1].strip()
        assert len(summary) > 10, f"{' '.join(path)} has no help text"


def test_plugins_table(cli):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "KIND", "HOOKS"]
    assert ["copd", __version__, "module", "register_modules"] in [ln.split() for ln in lines]


@pytest.mark.parametrize("args, message", [
    (["plugin", "new", "Acme Scale", "--kind", "driver"], "must be lower-case letters"),
    (["plugin", "new", "acme", "--kind", "gadget"], "'gadget' is not one of"),
])
def test_plugin_new_rejects_bad_arguments(cli, tmp_path, args, message):
    result = CliRunner().invoke(cli, [*args, "-d", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output


def test_plugin_new_refuses_to_overwrite(cli, tmp_path):
    (tmp_path / "telemon-acme").mkdir()
    result = CliRunner().invoke(cli, ["plugin", "new", "acme", "--kind", "driver",
                                      "-d", str(tmp_path)])
    assert result.exit_code == 2
    assert "already exists" in result.output
