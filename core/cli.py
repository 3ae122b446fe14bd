"""The `telemon` command line. Plugins add commands through the register_commands hook."""

from __future__ import annotations

import json
import sys

import click

from telemon import __version__, plugin_manager


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="telemon")
def cli() -> None:
    """telemon: home telemonitoring of chronically ill citizens.

    An edge gateway in the home reads the citizen's devices and forwards readings over MQTT;
    a central stores them, checks them against the citizen's own limits and raises triage
    for the monitoring nurse.
    """


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List the installed plugins: name, version, kind and the hooks each implements.

    Problems found while loading (a plugin that fails to import or declares something
    invalid) are listed too, and make the exit code 1.
    """
    _, registry = plugin_manager.get()
    if as_json:
        click.echo(json.dumps({
            "plugins": [{"name": p.name, "version": p.version, "distribution": p.distribution,
                         "kinds": list(p.kinds), "hooks": list(p.hooks),
                         "provides": _provides(registry, p.name)}
                        for p in registry.plugins],
            "errors": [{"plugin": e.plugin, "reason": e.reason} for e in registry.errors],
        }, indent=2))
    else:
        rows = [(p.name, p.version, ",".join(p.kinds) or "-", ", ".join(p.hooks))
                for p in registry.plugins]
        widths = [max([len(h), *(len(r[i]) for r in rows)])
                  for i, h in enumerate(("NAME", "VERSION", "KIND", "HOOKS"))]
        for row in [("NAME", "VERSION", "KIND", "HOOKS"), *rows]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        for error in registry.errors:
            click.secho(f"error: {error}", fg="red", err=True)
    if registry.errors:
        sys.exit(1)


def _provides(registry: plugin_manager.Registry, plugin: str) -> dict[str, list[str]]:
    provided: dict[str, list[str]] = {}
    for (kind, name), owner in registry.owner.items():
        if owner == plugin:
            provided.setdefault(kind, []).append(name)
    return provided


@cli.group()
def config() -> None:
    """Check edge and central configuration files."""


@config.command(name="check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a TOML config file and print every problem with its key path.

    Exit code 0 when the file is valid, 2 when it has problems.
    """
    from telemon.config import check_file

    _, registry = plugin_manager.get()
    problems = check_file(path, registry)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{path}: {len(problems)} problem(s)", err=True)
        sys.exit(2)
    click.echo(f"{path}: ok")


@cli.group(name="plugin")
def plugin_group() -> None:
    """Tools for plugin authors."""


@plugin_group.command(name="new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["driver", "module", "exporter"]), required=True,
              help="What the plugin registers.")
@click.option("--directory", "-d", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Where to create the package folder.")
def plugin_new(name: str, kind: str, directory: str) -> None:
    """Create a ready-to-install plugin package NAME with a working example and its tests."""
    from telemon.template import TemplateError, create_plugin

    try:
        folder = create_plugin(name, kind, directory)
    except TemplateError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"created {folder}")
    click.echo(f"next: pip install -e {folder}[test] && pytest {folder}")


def build_cli() -> click.Group:
    """The CLI with the commands every loaded plugin registers."""
    pm, registry = plugin_manager.get()
    plugin_manager.call_each(pm, "register_commands", registry.errors,
                             lambda _plugin: {"cli": cli})
    return cli


def main() -> None:
    build_cli()(prog_name="telemon")
