"""Plugin discovery and loading through entry points, including every way a plugin can break."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from telemon.plugin_manager import load_plugins_env, make_plugin_manager

BUILTINS = {"ble_blood_pressure": "driver", "copd": "module", "csv": "exporter"}

GOOD_DRIVER = """
from telemon.drivers import Driver, LineFramer, SerialSettings, StreamProtocol
from telemon.hookspecs import hookimpl

def parse(frame, ctx):
    return []

@hookimpl
def register_drivers(register):
    register(Driver(name="acme_scale", version="1.2.3", transport="serial", parse=parse,
                    description="ACME scale", serial=SerialSettings(baudrate=9600),
                    stream=StreamProtocol(framer=LineFramer)))
"""


def test_builtins_are_found_through_entry_points_with_their_kinds():
    _, registry = make_plugin_manager()
    kinds = {p.name: p.kinds for p in registry.plugins}
    for name, kind in BUILTINS.items():
        assert kinds[name] == (kind,)
    assert {p.distribution for p in registry.plugins if p.name in BUILTINS} == {"telemon"}
    assert "ble_blood_pressure" in registry.drivers
    assert "copd" in registry.modules
    assert "csv" in registry.exporters
    assert registry.errors == []


def test_plugins_json_lists_builtins_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "telemon", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    listed = {p["name"]: p for p in json.loads(out)["plugins"]}
    for name, kind in BUILTINS.items():
        assert listed[name]["kinds"] == [kind]
        assert listed[name]["provides"] == {kind: [name]}


def test_a_third_party_distribution_is_discovered(make_distribution):
    make_distribution("acme-telemon", {"acme_scale": "acme_scale"}, {"acme_scale": GOOD_DRIVER})
    _, registry = make_plugin_manager()
    info = {p.name: p for p in registry.plugins}["acme_scale"]
    assert (info.version, info.distribution, info.kinds) == ("1.2.3", "acme-telemon", ("driver",))
    assert registry.owner["driver", "acme_scale"] == "acme_scale"
    assert registry.errors == []


def test_load_plugins_env_loads_only_those(monkeypatch, make_distribution):
    make_distribution("acme-telemon", {"acme_scale": "acme_scale"}, {"acme_scale": GOOD_DRIVER})
    monkeypatch.setenv("TELEMON_LOAD_PLUGINS", "acme_scale, copd")
    only = load_plugins_env()
    assert only == {"acme_scale", "copd"}
    _, registry = make_plugin_manager(only)
    assert sorted(p.name for p in registry.plugins) == ["acme_scale", "copd"]
    assert set(registry.drivers) == {"acme_scale"}


def test_load_plugins_env_unset_means_all(monkeypatch):
    monkeypatch.delenv("TELEMON_LOAD_PLUGINS", raising=False)
    assert load_plugins_env() is None


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_load(make_distribution):
    make_distribution("broken-telemon", {"broken": "broken_plugin", "acme_scale": "acme_scale"},
                      {"broken_plugin": "import not_a_module_anywhere\n",
                       "acme_scale": GOOD_DRIVER})
    _, registry = make_plugin_manager()
    [error] = registry.errors
    assert error.plugin == "broken"
    assert "ModuleNotFoundError" in error.reason and "not_a_module_anywhere" in error.reason
    assert "acme_scale" in registry.drivers
    assert "copd" in registry.modules


def test_an_invalid_declaration_is_reported_and_valid_ones_from_the_same_plugin_kept(
        make_distribution):
    source = GOOD_DRIVER.replace(
        "@hookimpl", """
def bad(frame, ctx):
    return []

@hookimpl""").replace(
        "    register(Driver(", """    register(Driver(name="Bad Name", version="1",
                    transport="radio", parse=bad, description="broken"))
    register("not a driver")
    register(Driver(""")
    make_distribution("acme-telemon", {"acme_scale": "acme_scale"}, {"acme_scale": source})
    _, registry = make_plugin_manager()
    reasons = [e.reason for e in registry.errors if e.plugin == "acme_scale"]
    assert len(reasons) == 2
    assert "driver 'Bad Name'" in reasons[0]
    assert "transport 'radio' is not one of" in reasons[0]
    assert "register() takes a Driver, got str" in reasons[1]
    assert "acme_scale" in registry.drivers


def test_a_name_taken_by_another_plugin_is_reported(make_distribution):
    clash = GOOD_DRIVER.replace('"acme_scale"', '"ble_blood_pressure"')
    make_distribution("clash-telemon", {"clash": "clash_plugin"}, {"clash_plugin": clash})
    _, registry = make_plugin_manager()
    [error] = registry.errors
    assert error.plugin == "clash"
    assert "already registered by plugin 'ble_blood_pressure'" in error.reason
    assert registry.owner["driver", "ble_blood_pressure"] == "ble_blood_pressure"


def test_a_plugin_raising_in_its_hook_is_reported(make_distribution):
    source = """
from telemon.hookspecs import hookimpl

@hookimpl
def register_modules(register):
    raise RuntimeError("vendor bug")
"""
    make_distribution("raising-telemon", {"raising": "raising_plugin"},
                      {"raising_plugin": source})
    _, registry = make_plugin_manager()
    [error] = registry.errors
    assert error.plugin == "raising"
    assert error.reason == "register_modules raised RuntimeError: vendor bug"
    assert "copd" in registry.modules


def test_a_misspelt_hook_is_reported_and_that_plugin_unloaded(make_distribution):
    source = """
from telemon.hookspecs import hookimpl

@hookimpl
def register_driver(register):
    pass
"""
    make_distribution("typo-telemon", {"typo": "typo_plugin"}, {"typo_plugin": source})
    pm, registry = make_plugin_manager()
    [error] = registry.errors
    assert error.plugin == "typo"
    assert "unknown hook 'register_driver'" in error.reason
    assert not pm.has_plugin("typo")
    assert "typo" not in {p.name for p in registry.plugins}


def test_cli_plugins_reports_errors_with_exit_code_1(make_distribution):
    make_distribution("broken-telemon", {"broken": "broken_plugin"},
                      {"broken_plugin": "raise ImportError('needs libfoo')\n"})
    site = str(next(p for p in sys.path if p.endswith("site")))
    result = subprocess.run([sys.executable, "-m", "telemon", "plugins", "--json"],
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": site})
    assert result.returncode == 1
    [error] = json.loads(result.stdout)["errors"]
    assert error == {"plugin": "broken",
                     "reason": "cannot load broken_plugin: ImportError: needs libfoo"}
