"""The plugin manager: finds plugins through the `telemon` entry-point group (built-ins are
registered there too), loads them, and collects what they register.

A plugin that fails to import, implements an unknown hook, raises in a hook or declares
something invalid is reported with its name and the reason; every other plugin still loads.
`TELEMON_LOAD_PLUGINS=a,b` loads only the entry points named a and b.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from telemon import hookspecs
from telemon.drivers import Driver
from telemon.exporters import Exporter
from telemon.modules import DiseaseModule

ENTRY_POINT_GROUP = "telemon"
KINDS = {"register_drivers": "driver", "register_modules": "module",
         "register_exporters": "exporter"}


@dataclass(frozen=True)
class PluginError:
    plugin: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}: {self.reason}"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    distribution: str
    hooks: tuple[str, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(KINDS[h] for h in self.hooks if h in KINDS)


@dataclass
class Registry:
    """Everything the loaded plugins declared, by name, and every problem on the way."""

    plugins: list[PluginInfo] = field(default_factory=list)
    drivers: dict[str, Driver] = field(default_factory=dict)
    modules: dict[str, DiseaseModule] = field(default_factory=dict)
    exporters: dict[str, Exporter] = field(default_factory=dict)
    owner: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin
    errors: list[PluginError] = field(default_factory=list)


def make_plugin_manager(only: set[str] | None = None) -> tuple[pluggy.PluginManager, Registry]:
    """Load the entry-point plugins (or only those named) into a new PluginManager."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    for ep in _in_load_order(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)):
        if only is not None and ep.name not in only:
            continue
        if pm.has_plugin(ep.name):
            registry.errors.append(PluginError(ep.name, "a plugin of that name is already loaded"))
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not stop the others
            registry.errors.append(PluginError(ep.name, f"cannot load {ep.value}: "
                                               f"{type(exc).__name__}: {exc}"))
            continue
        registry.plugins.append(PluginInfo(ep.name, version, dist, ()))
    _drop_unknown_hooks(pm, registry)
    pm.check_pending()
    registry.plugins = [
        PluginInfo(p.name, p.version, p.distribution, _hooks_of(pm, p.name))
        for p in registry.plugins if pm.has_plugin(p.name)
    ]
    _collect(pm, registry)
    return pm, registry


def _in_load_order(eps) -> list[importlib.metadata.EntryPoint]:
    """Built-ins first, then third parties by name: which plugin keeps a contested name
    must not depend on the order of sys.path."""
    return sorted(eps, key=lambda ep: (ep.dist is None or ep.dist.name != "telemon", ep.name))


def _drop_unknown_hooks(pm: pluggy.PluginManager, registry: Registry) -> None:
    """Unregister plugins whose hooks match no spec (a typo in a hook name), saying which."""
    for name, caller in vars(pm.hook).items():
        if isinstance(caller, pluggy.HookCaller) and caller.spec is None:
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                registry.errors.append(PluginError(impl.plugin_name,
                                                   f"implements unknown hook {name!r}"))
                pm.unregister(name=impl.plugin_name)


def _hooks_of(pm: pluggy.PluginManager, plugin_name: str) -> tuple[str, ...]:
    callers = pm.get_hookcallers(pm.get_plugin(plugin_name)) or []
    return tuple(sorted(c.name for c in callers))


def call_each(pm: pluggy.PluginManager, hook: str, errors: list[PluginError],
              kwargs: Callable[[str], dict[str, Any]]) -> None:
    """Call one hook plugin by plugin, with the arguments `kwargs(plugin_name)` gives, so
    that a plugin that raises is reported by name and the others still run."""
    for impl in getattr(pm.hook, hook).get_hookimpls():
        offered = kwargs(impl.plugin_name)
        try:
            impl.function(**{arg: offered[arg] for arg in impl.argnames})
        except Exception as exc:
            errors.append(PluginError(impl.plugin_name,
                                      f"{hook} raised {type(exc).__name__}: {exc}"))


def _collect(pm: pluggy.PluginManager, registry: Registry) -> None:
    for hook, kind, expected, table in (
        ("register_drivers", "driver", Driver, registry.drivers),
        ("register_modules", "module", DiseaseModule, registry.modules),
        ("register_exporters", "exporter", Exporter, registry.exporters),
    ):
        def register_for(plugin, kind=kind, expected=expected, table=table):
            def register(obj):
                if not isinstance(obj, expected):
                    problem = f"register() takes a {expected.__name__}, got {type(obj).__name__}"
                elif problems := obj.problems():
                    problem = f"{kind} {obj.name!r}: " + "; ".join(problems)
                elif obj.name in table:
                    problem = (f"{kind} {obj.name!r} is already registered by plugin "
                               f"{registry.owner[kind, obj.name]!r}")
                else:
                    table[obj.name] = obj
                    registry.owner[kind, obj.name] = plugin
                    return
                registry.errors.append(PluginError(plugin, problem))

            return {"register": register}

        call_each(pm, hook, registry.errors, register_for)


def load_plugins_env() -> set[str] | None:
    """The entry-point names in TELEMON_LOAD_PLUGINS, or None to load every plugin."""
    value = os.environ.get("TELEMON_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


@functools.cache
def get() -> tuple[pluggy.PluginManager, Registry]:
    """This process's plugin manager and registry, loaded once."""
    return make_plugin_manager(load_plugins_env())
