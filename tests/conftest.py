from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click
import pytest

from telemon import admin

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_central_toml(folder: Path, tables: str = "", *, broker: str = "mqtt://127.0.0.1:1",
                       storage: str = "data") -> Path:
    """`folder`/central.toml of organisation kommune-0999 (the default time zone): its
    broker a port nobody listens on unless given, its database in `folder`/`storage`, then
    `tables` (TOML: modules, exporters, retention...)."""
    path = folder / "central.toml"
    path.write_text(f'role = "central"\norganisation = "kommune-0999"\n'
                    f'[broker]\nurl = "{broker}"\n[storage]\npath = "{folder / storage}"\n'
                    + textwrap.dedent(tables))
    return path


def admin_cli() -> click.Group:
    """A `telemon` group of the administration commands (telemon.admin.COMMANDS)."""
    group = click.Group(name="telemon")
    for command in admin.COMMANDS:
        group.add_command(command)
    return group


@pytest.fixture(autouse=True)
def not_under_sudo(monkeypatch):
    """Audit entries as without sudo, whoever runs the suite (identity tests set SUDO_USER)."""
    monkeypatch.delenv("SUDO_USER", raising=False)


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """Put a real distribution (a .dist-info with entry points, plus its module) on sys.path.

    `make_distribution("acme", {"acme_scale": "acme_scale"}, {"acme_scale": "<source>"})`
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(dist: str, entry_points: dict[str, str], modules: dict[str, str],
             version: str = "1.2.3") -> Path:
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\n"
                                       f"Version: {version}\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[telemon]\n{lines}\n")
        for name, source in modules.items():
            (site / f"{name}.py").write_text(textwrap.dedent(source))
        return site

    yield make
    for name in list(sys.modules):
        module = sys.modules[name]
        if getattr(module, "__file__", None) and str(site) in str(module.__file__):
            del sys.modules[name]
