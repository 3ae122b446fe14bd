"""The `telemon` command line. Plugins add commands through the register_commands hook."""

from __future__ import annotations

import json
import sys

import click

from telemon import __version__, plugin_manager
from telemon.edge import edge


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


@cli.group(name="dsp")
def dsp_group() -> None:
    """Signal processing on recordings (WFDB records from PhysioNet and the like)."""


@dsp_group.command(name="qrs")
@click.argument("record", metavar="RECORD_PATH")
@click.option("--channel", "-c", type=click.IntRange(min=0), default=0, show_default=True,
              help="Signal number in the record (0 = first).")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object {"fs": Hz, "peaks": [sample indices]}.')
def dsp_qrs(record: str, channel: int, as_json: bool) -> None:
    """Detect the QRS complexes (R peaks) of one ECG channel of a WFDB record.

    RECORD_PATH is the record without extension (reads RECORD_PATH.hea and its signal
    file). Peaks are sample indices from 0, so any annotated record can be scored against
    its .atr beats. Exit code 2 when the record cannot be read, the channel does not exist
    or its sampling rate is outside 125-1000 Hz.
    """
    from telemon import dsp
    from telemon.recordings import RecordError, read_record

    try:
        rec = read_record(record)
    except RecordError as exc:
        raise click.UsageError(str(exc)) from None
    if channel >= rec.signals.shape[1]:
        raise click.UsageError(f"{record}: channel {channel} does not exist (the record has "
                               f"{rec.signals.shape[1]}: {', '.join(rec.channels)})")
    try:
        peaks = dsp.detect_qrs(rec.signals[:, channel], rec.fs)
    except ValueError as exc:
        raise click.UsageError(f"{record}: {exc}") from None
    if as_json:
        click.echo(json.dumps({"fs": rec.fs, "peaks": peaks.tolist()}))
        return
    seconds = rec.signals.shape[0] / rec.fs
    rate = dsp.heart_rate(peaks, rec.fs)
    name = rec.channels[channel] or f"signal {channel}"
    click.echo(f"{rec.name}: {len(peaks)} beats in {int(seconds // 60)} min "
               f"{seconds % 60:.1f} s ({name}, {rec.fs:g} Hz)")
    click.echo("mean heart rate: " + ("-" if rate != rate else f"{rate:.1f} /min"))


cli.add_command(edge)


def build_cli() -> click.Group:
    """The CLI with the commands every loaded plugin registers."""
    pm, registry = plugin_manager.get()
    plugin_manager.call_each(pm, "register_commands", registry.errors,
                             lambda _plugin: {"cli": cli})
    return cli


def main() -> None:
    build_cli()(prog_name="telemon")
