"""One import namespace `telemon` mapped onto core/, plugins/, cext/, tui/; no top-level
`core`, `plugins` or `tui`; the compiled core is what gets imported when it was built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

KERNELS = sorted(p.stem for p in (ROOT / "cext").glob("*.pyx"))
PROBE = f"KERNELS = {KERNELS!r}\n" + """
import importlib.util, json
import telemon, telemon.cext, telemon.plugins, telemon.tui, telemon.dsp
print(json.dumps({
    "top_level": {m: importlib.util.find_spec(m) is not None for m in ("core", "plugins", "tui",
                                                                     "cext")},
    "telemon": telemon.__file__,
    "implementation": telemon.dsp.IMPLEMENTATION,
    "kernels": {name: importlib.util.find_spec(f"telemon.cext.{name}").origin
                for name in KERNELS},
}))
"""


def probe(cwd, **env):
    environment = {**os.environ, **env}
    environment.pop("TELEMON_PUREPYTHON", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=environment,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_installed_package_has_one_namespace_and_uses_the_compiled_core(tmp_path):
    found = probe(tmp_path)
    assert found["top_level"] == {"core": False, "plugins": False, "tui": False, "cext": False}
    assert found["implementation"] == "compiled"
    assert KERNELS and all(origin.endswith(".so") for origin in found["kernels"].values())


@pytest.mark.slow
def test_a_regular_pip_install_works_too(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True)
    assert not (target / "core").exists() and not (target / "plugins").exists()
    found = probe(tmp_path, PYTHONPATH=str(target))
    assert found["telemon"].startswith(str(target))
    assert found["implementation"] == "compiled"
    for origin in found["kernels"].values():
        assert origin.startswith(str(target)) and origin.endswith(".so")
    listed = subprocess.run([sys.executable, "-m", "telemon", "plugins", "--json"],
                            env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert {p["name"] for p in json.loads(listed)["plugins"]} >= {"ble_blood_pressure", "copd",
                                                                  "csv"}
