"""`telemon plugin new`: write a ready plugin package with a working example and its tests."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from telemon import __version__

KINDS = ("driver", "module", "exporter")
DESCRIPTIONS = {
    "driver": "A telemon device driver for a serial thermometer",
    "module": "A telemon disease module watching the pulse",
    "exporter": "A telemon exporter writing JSON Lines files",
}


class TemplateError(ValueError):
    pass


def create_plugin(name: str, kind: str, directory: str | Path = ".") -> Path:
    """Create `<directory>/telemon-<name>/` for a plugin of `kind`; return its folder."""
    if kind not in KINDS:
        raise TemplateError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]{1,40}", name):
        raise TemplateError(f"name {name!r} must be lower-case letters, digits and _, "
                            "starting with a letter")
    folder = Path(directory) / f"telemon-{name.replace('_', '-')}"
    if folder.exists():
        raise TemplateError(f"{folder} already exists")
    values = {"name": name, "module": f"telemon_{name}", "dist": folder.name, "kind": kind,
              "description": DESCRIPTIONS[kind], "telemon_version": __version__}
    templates = resources.files("telemon") / "templates"
    files = {
        "pyproject.toml": templates / "pyproject.toml.tmpl",
        "README.md": templates / "README.md.tmpl",
        f"{values['module']}.py": templates / f"{kind}_module.py.tmpl",
        f"tests/test_{name}.py": templates / f"{kind}_test.py.tmpl",
    }
    for relative, source in files.items():
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder
