"""The vendor plugin template: generate one package of each kind, install it as a real
distribution, run its own tests, and check telemon lists it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from telemon.template import create_plugin


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["driver", "module", "exporter"])
def test_generated_plugin_installs_passes_its_tests_and_is_listed(tmp_path, kind):
    name = f"acme_{kind}"
    folder = create_plugin(name, kind, tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(folder)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TELEMON_LOAD_PLUGINS", None)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(folder / "tests")], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout
    listed = subprocess.run([sys.executable, "-m", "telemon", "plugins", "--json"], env=env,
                            capture_output=True, text=True, check=True).stdout
    plugins = {p["name"]: p for p in json.loads(listed)["plugins"]}
    assert plugins[name]["kinds"] == [kind]
    assert plugins[name]["distribution"] == f"telemon-acme-{kind}"
    assert plugins[name]["version"] == "0.1.0"
