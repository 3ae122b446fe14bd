"""Every hook is documented and has a test here named test_hook_<name> that calls it
through a real plugin manager (as datasette checks its own hooks)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click
import click.testing
import pluggy
import sqlite_utils

from telemon import hookspecs
from telemon.hookspecs import hookimpl
from telemon.plugin_manager import PluginError, call_each, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "telemon_spec")]


def test_hooks_exist():
    assert set(HOOKS) == {"register_drivers", "register_modules", "register_exporters",
                          "register_commands", "prepare_database", "startup", "shutdown"}


def test_every_hook_has_a_one_line_docstring():
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__
        assert doc and doc.strip() and "\n" not in doc.strip(), name


def test_every_hook_is_documented_in_the_plugin_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        assert f"`{name}(" in guide, f"{name} is not in docs/plugins.md"


def test_every_hook_has_a_test():
    here = sys.modules[__name__]
    for name in HOOKS:
        assert callable(getattr(here, f"test_hook_{name}", None)), f"no test_hook_{name}"


def _pm_with(plugin) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("telemon")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="under_test")
    pm.check_pending()
    return pm


def test_hook_register_drivers():
    _, registry = make_plugin_manager({"ble_blood_pressure"})
    assert registry.drivers["ble_blood_pressure"].transport == "ble"


def test_hook_register_modules():
    _, registry = make_plugin_manager({"copd"})
    assert registry.modules["copd"].codes[0] == "spo2"


def test_hook_register_exporters():
    _, registry = make_plugin_manager({"csv"})
    assert registry.exporters["csv"].options["directory"].required


def test_hook_register_commands():
    class Plugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")

    group = click.Group()
    errors: list[PluginError] = []
    call_each(_pm_with(Plugin()), "register_commands", errors, lambda _p: {"cli": group})
    assert errors == []
    assert click.testing.CliRunner().invoke(group, ["hello"]).output == "hello from a plugin\n"


def test_hook_prepare_database(tmp_path):
    class Plugin:
        @hookimpl
        def prepare_database(self, db):
            db["vendor_calibration"].create({"device": str, "offset": float}, pk="device",
                                            if_not_exists=True)

    db = sqlite_utils.Database(tmp_path / "t.db")
    _pm_with(Plugin()).hook.prepare_database(db=db)
    assert db["vendor_calibration"].exists()


def test_hook_startup_and_shutdown():
    calls = []

    class Plugin:
        @hookimpl
        def startup(self, config):
            calls.append(("startup", config))

        @hookimpl
        def shutdown(self):  # a plugin may accept a subset of the arguments
            calls.append(("shutdown", None))

    pm = _pm_with(Plugin())
    pm.hook.startup(config="cfg")
    pm.hook.shutdown(config="cfg")
    assert calls == [("startup", "cfg"), ("shutdown", None)]


test_hook_startup = test_hook_shutdown = test_hook_startup_and_shutdown
