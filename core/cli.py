"""The `telemon` command line. Plugins add commands through the register_commands hook."""

from __future__ import annotations

import importlib
import json
import sys

import click

from telemon import __version__, admin, plugin_manager
from telemon.broker import broker_command
from telemon.central import central_command
from telemon.edge import edge
from telemon.evaluate import evaluate_group
from telemon.export import export_group
from telemon.retention import retention_command

LAZY_COMMANDS = {"tui": ("telemon.tui.app", "tui_command"),
                 "demo": ("telemon.demo", "demo_command")}
"""Commands imported only when used (the dashboard loads Textual)."""


class TelemonGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attribute = LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=TelemonGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command(name="decode")
@click.option("--profile", "-p", "profile", required=True, metavar="NAME",
              help="A driver name (telemon plugins lists them) or a BLE characteristic's "
                   "UUID (2A35, 0x2a9d, or the 128-bit form).")
@click.option("--read", "reads", multiple=True, metavar="UUID=HEX",
              help="A value the device gave at connect (e.g. 2A9E=18000000, a Weight Scale "
                   "Feature); repeatable.")
@click.option("--stream", is_flag=True,
              help="HEX is raw bytes from a serial/USB port: split it with the driver's "
                   "framer first.")
@click.option("--received", metavar="TIME",
              help="The gateway's receive time, ISO 8601 with an offset (default: now); "
                   "stamps readings that carry no time of their own.")
@click.option("--tz", "zone", default="Europe/Copenhagen", show_default=True,
              help="The zone the device's clock is set to (IANA name).")
@click.argument("hex_parts", nargs=-1, required=True, metavar="HEX")
def decode_command(profile: str, reads: tuple[str, ...], stream: bool, received: str | None,
                   zone: str, hex_parts: tuple[str, ...]) -> None:
    """Print the observations one frame decodes to, one JSON object a line.

    HEX is one frame as the parser sees it (a BLE characteristic value; for serial drivers
    what their framer hands on, or raw port bytes with --stream); spaces and colons are
    allowed. Each line: driver, code {system, code, display}, value (a decimal string, the
    device's precision kept) or absent (why there is no value) or components (blood
    pressure), unit (UCUM), time (effective time, ISO 8601), status (flags), context, raw
    (hex). Exit code 1 when the frame does not decode (the reason on stderr), 2 for an
    unknown profile or bad hex.
    """
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from telemon.drivers import FrameError, ParseContext

    _, registry = plugin_manager.get()
    driver, source = _decode_driver(profile, registry.drivers)
    frame = _hex("HEX", "".join(hex_parts))
    features = {}
    for item in reads:
        uuid, equals, value = item.partition("=")
        if not equals or not uuid.strip():
            raise click.BadParameter(f"{item!r} is not UUID=HEX", param_hint="--read")
        features[uuid.strip()] = _hex("--read", value)
    try:
        device_tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {zone!r}", param_hint="--tz") from None
    if received is None:
        moment = datetime.now(UTC)
    else:
        try:
            moment = datetime.fromisoformat(received)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise click.BadParameter(f"{received!r} is not an ISO 8601 time with an offset",
                                     param_hint="--received")
    if stream and driver.stream is None:
        raise click.UsageError(f"--stream: driver {driver.name} has no framer (it is a "
                               f"{driver.transport} driver)")
    ctx = ParseContext(patient="decode", device="decode", gateway="decode", received=moment,
                       device_tz=device_tz, source=source, features=features)
    items: list[bytes | FrameError] = [frame]
    if stream:
        framer = driver.stream.framer()
        items = framer.feed(frame)
        items += framer.flush() if hasattr(framer, "flush") else (
            [FrameError(f"{len(framer.buffer)} byte(s) left without a frame end")]
            if getattr(framer, "buffer", b"") else [])
    failed = False
    for number, item in enumerate(items, 1):
        where = f"frame {number}: " if stream else ""
        if isinstance(item, FrameError):
            click.echo(f"error: {where}{item}", err=True)
            failed = True
            continue
        try:
            observations = driver.parse(item, ctx)
        except FrameError as exc:
            click.echo(f"error: {where}frame does not decode ({driver.name}): {exc}", err=True)
            failed = True
            continue
        except Exception as exc:  # a driver bug: say so, as the gateway's quarantine would
            click.echo(f"error: {where}driver {driver.name} crashed: "
                       f"{type(exc).__name__}: {exc}", err=True)
            failed = True
            continue
        for observation in observations:
            click.echo(json.dumps(_observation_json(observation), ensure_ascii=False))
    if stream and not any(isinstance(item, bytes) for item in items) and not failed:
        click.echo("error: no complete frame in the stream", err=True)
        failed = True
    if failed:
        sys.exit(1)


def _hex(what: str, text: str) -> bytes:
    cleaned = "".join(text.replace(":", " ").split())
    cleaned = cleaned[2:] if cleaned[:2].lower() == "0x" else cleaned
    if not cleaned:
        raise click.BadParameter("no bytes given", param_hint=what)
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        bad = next((c for c in cleaned if c not in "0123456789abcdefABCDEF"), None)
        why = f"{bad!r} is not a hex digit" if bad else f"odd number of digits ({len(cleaned)})"
        raise click.BadParameter(f"not hex: {why}", param_hint=what) from None


def _decode_driver(name: str, drivers):
    """(driver, ParseContext.source) for a driver name or a characteristic UUID."""
    from telemon.gatt import short_uuid, uuid128

    if name in drivers:
        driver = drivers[name]
        if driver.simulate is not None:
            return driver, driver.simulate.source
        if driver.ble is not None and driver.ble.characteristics:
            return driver, driver.ble.characteristics[0]
        return driver, ""
    short = short_uuid(name)
    if short is not None:
        matches = [d for d in drivers.values() if d.ble and any(
            short_uuid(c) == short for c in d.ble.characteristics)]
        if len(matches) == 1:
            return matches[0], uuid128(short)
        if matches:
            raise click.BadParameter(
                f"characteristic {short:04X} is read by several drivers "
                f"({', '.join(sorted(d.name for d in matches))}): give the driver name",
                param_hint="--profile")
        known = sorted({f"{short_uuid(c):04X}" for d in drivers.values() if d.ble
                        for c in d.ble.characteristics if short_uuid(c) is not None})
        raise click.BadParameter(f"no installed driver reads characteristic {short:04X} "
                                 f"(those read: {', '.join(known) or 'none'})",
                                 param_hint="--profile")
    raise click.BadParameter(f"{name!r} is neither an installed driver nor a characteristic "
                             f"UUID (drivers: {', '.join(sorted(drivers)) or 'none'})",
                             param_hint="--profile")


def _observation_json(observation) -> dict:
    """One observation as `telemon decode` prints it."""
    def code(c):
        return {"system": c.system, "code": c.code, "display": c.display}

    out: dict = {"driver": observation.driver, "code": code(observation.code)}
    if observation.components:
        out["components"] = [
            {"code": code(c.code), "unit": c.unit,
             **({"value": str(c.value)} if c.value is not None else {"absent": str(c.absent)})}
            for c in observation.components]
    elif observation.value is not None:
        out["value"] = str(observation.value)
    else:
        out["absent"] = str(observation.absent)
    out.update(unit=observation.unit, time=observation.effective.isoformat(),
               status=list(observation.flags), context=dict(observation.context),
               raw=observation.raw.hex())
    return out


cli.add_command(edge)
cli.add_command(central_command)
cli.add_command(broker_command)
cli.add_command(export_group)
cli.add_command(evaluate_group)
cli.add_command(retention_command)
for _group in admin.COMMANDS:
    cli.add_command(_group)


def build_cli() -> click.Group:
    """The CLI with the commands every loaded plugin registers."""
    pm, registry = plugin_manager.get()
    plugin_manager.call_each(pm, "register_commands", registry.errors,
                             lambda _plugin: {"cli": cli})
    return cli


def main() -> None:
    build_cli()(prog_name="telemon")


if __name__ == "__main__":
    main()
