"""Edge and central config files: the examples, every kind of problem, and `config check`."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from telemon import plugin_manager
from telemon.cli import cli
from telemon.config import (
    CentralConfig,
    ConfigError,
    ConfigProblem,
    EdgeConfig,
    SecretRef,
    check_file,
    load,
    validate_limits,
)
from telemon.drivers import Driver, LineFramer, SerialSettings, StreamProtocol
from telemon.models import LimitSet
from telemon.plugin_manager import make_plugin_manager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REGISTRY = make_plugin_manager()[1]


def edge(top: str = "", broker: str = 'url = "mqtt://localhost"', tail: str = "") -> str:
    """A valid edge file, with lines added at the top level, in [broker], and at the end."""
    return (f'role = "edge"\norganisation = "org-1"\ngateway = "gw-1"\n{top}\n'
            f'[broker]\n{broker}\n[storage]\npath = "/var/lib/telemon"\n{tail}\n')


def central(top: str = "", broker: str = 'url = "mqtt://localhost"', tail: str = "") -> str:
    return (f'role = "central"\norganisation = "org-1"\n{top}\n'
            f'[broker]\n{broker}\n[storage]\npath = "/var/lib/telemon"\n{tail}\n')


DEVICE = '[[devices]]\ndriver = "ble_blood_pressure"\npatient = "pt-1"\ndevice = "bpm-1"\n'


def problems(tmp_path: Path, text: str, registry=REGISTRY) -> list[str]:
    path = tmp_path / "telemon.toml"
    path.write_text(text, encoding="utf-8")
    return [str(p) for p in check_file(path, registry)]


def one(tmp_path: Path, text: str, registry=REGISTRY) -> tuple[str, str]:
    """The key and message of the one problem in a file."""
    found = problems(tmp_path, text, registry)
    assert len(found) == 1, found
    key, _, message = found[0].partition(": ")
    return key, message


# --- valid files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["edge.toml", "central.toml"])
def test_examples_check_clean(name):
    assert check_file(EXAMPLES / name, REGISTRY) == []


def test_edge_example_loads():
    config = load(EXAMPLES / "edge.toml", REGISTRY)
    assert isinstance(config, EdgeConfig)
    assert config.gateway == "gw-7f3a2c"
    assert config.timezone == ZoneInfo("Europe/Copenhagen")
    assert config.broker.password == SecretRef("env", "TELEMON_BROKER_PASSWORD")
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "mqtt.telemon.example", 8883, True)
    assert config.outbox.max_megabytes == 512.0
    assert [(d.driver, d.patient, d.device, d.address, d.user) for d in config.devices] == [
        ("ble_blood_pressure", "pt-000042", "bpm-a1b2c3", "A4:C1:38:5E:21:0F", 1),
        ("serial_contec_cms50d_v2", "pt-000042", "oxi-9c41d0", None, None)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway = "other"  # type: ignore[misc]


def test_central_example_loads():
    config = load(EXAMPLES / "central.toml", REGISTRY)
    assert isinstance(config, CentralConfig)
    assert config.storage.path == Path("/var/lib/telemon/central")
    copd = config.modules["copd"]
    assert copd.enabled is True
    assert config.exporters["csv"].enabled is True
    assert dict(config.exporters["csv"].options) == {"directory": "/var/lib/telemon/export/csv"}
    with pytest.raises(TypeError):
        config.modules["heart_failure"] = copd  # type: ignore[index]


def test_edge_defaults(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(edge(), encoding="utf-8")
    config = load(path, REGISTRY)
    assert config.timezone == ZoneInfo("Europe/Copenhagen")
    assert config.outbox.max_megabytes == 512.0
    assert config.devices == ()
    assert (config.broker.port, config.broker.tls, config.broker.password) == (1883, False, None)


def test_limits_become_decimals_of_what_was_written():
    found, problems = validate_limits({"temperature": {"yellow_high": 37.2}},
                                      REGISTRY.modules["copd"])
    assert problems == []
    # not the binary 37.2000000000000028
    assert dict(found) == {"temperature": LimitSet(yellow_high=Decimal("37.2"))}


def test_secret_reference_resolves(tmp_path, monkeypatch):
    monkeypatch.setenv("TELEMON_TEST_SECRET", "s3cret")
    assert SecretRef("env", "TELEMON_TEST_SECRET").resolve() == "s3cret"
    (tmp_path / "password").write_text("from-file\n")
    assert SecretRef("file", str(tmp_path / "password")).resolve() == "from-file"
    monkeypatch.delenv("TELEMON_TEST_SECRET")
    with pytest.raises(LookupError, match="TELEMON_TEST_SECRET is not set"):
        SecretRef("env", "TELEMON_TEST_SECRET").resolve()


# --- one problem at a time ------------------------------------------------------------------

def test_wrong_type(tmp_path):
    assert problems(tmp_path, central(tail='[modules.copd]\nenabled = "yes"\n')) == [
        'modules.copd.enabled: must be true or false, got "yes"']


def limit_problems(data: dict) -> list[str]:
    """What config.validate_limits says of per-code limits of COPD (evaluate --limits)."""
    found, problems = validate_limits(data, REGISTRY.modules["copd"])
    assert (found is None) == bool(problems)
    return [str(p) for p in problems]


def test_default_limits_in_the_central_config_are_refused_naming_the_command(tmp_path):
    text = central(tail='[modules.copd]\nenabled = true\n'
                        '[modules.copd.limits.spo2]\nred_low = 88\n')
    key, message = one(tmp_path, text)
    assert key == "modules.copd.limits"
    assert message.startswith("the organisation's default limits are no longer read from "
                              "the config: they are kept in the central's database")
    assert "`telemon limits defaults set copd CODE --red-low" in message
    assert "--reason TEXT" in message and message.endswith("remove this table")
    # even an empty table: there is one place for the defaults, the database
    assert [p.split(":")[0] for p in problems(
        tmp_path, central(tail="[modules.copd]\nenabled = true\n[modules.copd.limits]\n"))] == [
        "modules.copd.limits"]
    # and it is not offered among the allowed keys of a module
    key, message = one(tmp_path, central(tail="[modules.copd]\nenabled = true\nlimts = 1\n"))
    assert message == "unknown key (allowed keys: enabled)"


def test_limit_not_a_number():
    assert limit_problems({"spo2": {"red_low": "ninety"}}) == [
        'spo2.red_low: must be a number between 50 and 100, got "ninety"']


@pytest.mark.parametrize("value, shown", [(900, "900"), (49.5, "49.5"), (True, "true"),
                                          (math.nan, "nan"), (math.inf, "inf")])
def test_limit_out_of_plausible_range(value, shown):
    assert limit_problems({"spo2": {"yellow_low": value}}) == [
        f"spo2.yellow_low: must be a number between 50 and 100, got {shown}"]


def test_range_is_that_of_the_code():
    assert limit_problems({"pulse": {"red_high": 251}}) == [
        "pulse.red_high: must be a number between 20 and 250, got 251"]


def test_code_not_in_module():
    (message,) = limit_problems({"bp_sys": {"red_low": 90}})
    assert message.startswith("bp_sys: unknown code for module copd")
    assert "its codes: spo2, pulse, temperature, weight, fev1" in message


def test_limits_out_of_order():
    (message,) = limit_problems({"pulse": {"red_low": 60, "yellow_low": 50,
                                           "yellow_high": 100}})
    assert message.startswith("pulse: ")
    assert "red_low" in message and "yellow_low" in message
    assert "60" in message and "50" in message


def test_equal_limits_are_in_order():
    assert limit_problems({"pulse": {"red_low": 50, "yellow_low": 50}}) == []
    found, _ = validate_limits({"pulse": {"red_low": 50, "yellow_low": 50.5}},
                               REGISTRY.modules["copd"])
    assert found == {"pulse": LimitSet(red_low=Decimal(50), yellow_low=Decimal("50.5"))}


def test_unknown_key_with_suggestion(tmp_path):
    key, message = one(tmp_path, edge(broker='url = "mqtt://localhost"\nusernme = "gw-1"'))
    assert key == "broker.usernme"
    assert message.startswith('unknown key; did you mean "username"?')


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path):
    key, message = one(tmp_path, edge(top='colour = "blue"'))
    assert key == "colour"
    assert "did you mean" not in message
    assert message.startswith("unknown key (allowed keys: role, organisation, broker")
    assert "modules" not in message  # a central-only key is not offered to an edge file


def test_unknown_module(tmp_path):
    key, message = one(tmp_path, central(tail="[modules.cpod]\nenabled = true\n"))
    assert key == "modules.cpod"
    installed = ", ".join(plugin_manager.get()[1].modules)
    assert message == f'unknown module; did you mean "copd"? (installed modules: {installed})'


def test_unknown_driver(tmp_path):
    text = edge(tail=DEVICE.replace("ble_blood_pressure", "ble_bloodpressure"))
    assert problems(tmp_path, text) == [
        'devices[0].driver: unknown driver "ble_bloodpressure"; did you mean '
        f'"ble_blood_pressure"? (installed drivers: {", ".join(REGISTRY.drivers)})']


def test_unknown_exporter(tmp_path):
    key, message = one(tmp_path, central(tail="[exporters.fihr]\nenabled = true\n"))
    assert key == "exporters.fihr"
    installed = ", ".join(plugin_manager.get()[1].exporters)
    assert message == f'unknown exporter; did you mean "fhir"? (installed exporters: {installed})'


def test_missing_required_exporter_option(tmp_path):
    assert problems(tmp_path, central(tail="[exporters.csv]\nenabled = true\n")) == [
        "exporters.csv.directory: is required but missing"]


def test_exporter_option_type_and_unknown_option(tmp_path):
    text = central(tail='[exporters.csv]\nenabled = true\ndirectory = 5\ndirectroy = "/x"\n')
    assert problems(tmp_path, text) == [
        "exporters.csv.directory: must be a non-empty string, got 5",
        'exporters.csv.directroy: unknown key; did you mean "directory"? '
        "(allowed keys: enabled, directory)"]


@pytest.mark.parametrize("url, essence", [
    ("http://broker.example", "must be an mqtt:// or mqtts:// (TLS) URL"),
    ("mqtt://broker.example:99999", "port between 1 and 65535"),
    ("mqtt://broker.example:0", "port between 1 and 65535"),
    ("mqtt://broker.example:port", "port between 1 and 65535"),
    ("mqtt://:1883", "naming the broker host"),
    ("mqtt://broker.example/telemon", "no path or query"),
    ("broker.example", "must be an mqtt:// or mqtts:// (TLS) URL"),
])
def test_bad_broker_url(tmp_path, url, essence):
    key, message = one(tmp_path, edge(broker=f'url = "{url}"'))
    assert key == "broker.url"
    assert essence in message
    assert message.endswith(f'got "{url}"')


def test_broker_url_not_a_string(tmp_path):
    assert problems(tmp_path, edge(broker="url = 1883")) == [
        'broker.url: must be a broker URL such as "mqtts://broker.example:8883", got 1883']


def test_credentials_in_broker_url_are_rejected_and_not_repeated(tmp_path):
    key, message = one(tmp_path, edge(broker='url = "mqtts://gw:hunter2@broker.example"'))
    assert key == "broker.url"
    assert "must not hold credentials" in message
    assert "hunter2" not in message


def test_literal_password(tmp_path):
    key, message = one(tmp_path, edge(broker='url = "mqtt://localhost"\npassword = "hunter2"'))
    assert key == "broker.password"
    assert 'must be a reference, "env:VARNAME" or "file:/absolute/path"' in message
    assert "not the password itself" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("reference, essence", [
    ("env:1PASSWORD", "environment variable"),
    ("env:", "environment variable"),
    ("file:secrets/broker", "absolute path"),
])
def test_bad_password_reference(tmp_path, reference, essence):
    key, message = one(tmp_path, edge(broker=f'url = "mqtt://h"\npassword = "{reference}"'))
    assert key == "broker.password"
    assert essence in message


def test_bad_timezone(tmp_path):
    assert problems(tmp_path, edge(top='timezone = "Europe/Copenhagn"')) == [
        'timezone: must be an IANA time zone name such as "Europe/Copenhagen", '
        'got "Europe/Copenhagn"']


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('role = "edge"\norganisation = \n', encoding="utf-8")
    found = check_file(path, REGISTRY)
    assert len(found) == 1
    assert found[0].key == ""
    assert str(found[0]).startswith(f"{path}: not valid TOML: ")
    assert "line 2, column 16" in str(found[0])


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('organisation = "Ærø"\n'.encode("latin-1"))
    [problem] = check_file(path, REGISTRY)
    assert "not valid UTF-8" in str(problem)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    assert check_file(path, REGISTRY) == [ConfigProblem("", f"{path}: no such file")]
    with pytest.raises(ConfigError) as raised:
        load(path, REGISTRY)
    assert raised.value.problems == [ConfigProblem("", f"{path}: no such file")]


def test_central_section_in_edge_file(tmp_path):
    key, message = one(tmp_path, edge(tail="[modules.copd]\nenabled = true\n"))
    assert key == "modules"
    assert message == 'is only allowed in a central config (this file has role = "edge")'


def test_edge_key_in_central_file(tmp_path):
    key, message = one(tmp_path, central(top='gateway = "gw-1"'))
    assert key == "gateway"
    assert message == 'is only allowed in an edge config (this file has role = "central")'


def test_missing_and_wrong_role(tmp_path):
    assert problems(tmp_path, edge().replace('role = "edge"', "")) == [
        "role: is required but missing"]
    assert problems(tmp_path, edge().replace('"edge"', '"gateway"')) == [
        'role: must be "edge" or "central", got "gateway"']


@pytest.mark.parametrize("text, expected", [
    (edge().replace('gateway = "gw-1"', ""), "gateway: is required but missing"),
    (edge(broker=""), "broker.url: is required but missing"),
    (central().replace('[storage]\npath = "/var/lib/telemon"', ""),
     "storage: is required but missing"),
    (central(tail="[modules.copd]\n"), "modules.copd.enabled: is required but missing"),
])
def test_required_key_missing(tmp_path, text, expected):
    assert problems(tmp_path, text) == [expected]


def test_organisation_must_be_a_pseudonymous_id(tmp_path):
    text = central().replace('"org-1"', '"Aarhus Kommune"')
    assert problems(tmp_path, text) == [
        "organisation: must be a pseudonymous id (1 to 64 letters, digits and . _ : -), "
        'got "Aarhus Kommune"']
    assert problems(tmp_path, central().replace('"org-1"', f'"{"o" * 65}"')) != []
    assert problems(tmp_path, central().replace('"org-1"', '"org-1\\n"')) != []


def test_patient_cpr_number_is_rejected_and_not_repeated(tmp_path):
    key, message = one(tmp_path, edge(tail=DEVICE.replace('"pt-1"', '"010190-1234"')))
    assert key == "devices[0].patient"
    assert "CPR" in message and "010190" not in message


def test_device_problems(tmp_path):
    text = edge(tail=DEVICE + 'user = 255\n' + DEVICE + 'address = "/dev/ttyUSB0"\n')
    assert problems(tmp_path, text) == [
        "devices[0].user: must be an integer between 1 and 254, got 255",
        'devices[1].address: must be a BLE MAC address like "A4:C1:38:00:00:01" for a ble '
        'driver, got "/dev/ttyUSB0"',
        'devices[1].device: "bpm-1" is already used by devices[0]',
    ]


def test_ble_device_address_must_be_a_mac(tmp_path):
    key, message = one(tmp_path, edge(tail=DEVICE + 'address = "/dev/ttyUSB0"\n'))
    assert key == "devices[0].address"
    assert message.startswith("must be a BLE MAC address")


def test_serial_device_address_and_user(tmp_path):
    serial = Driver(name="serial_spiro", version="1", transport="serial",
                    parse=lambda frame, context: [], description="a test spirometer",
                    serial=SerialSettings(baudrate=9600),
                    stream=StreamProtocol(framer=LineFramer))
    registry = dataclasses.replace(REGISTRY, drivers={**REGISTRY.drivers, "serial_spiro": serial})
    device = DEVICE.replace("ble_blood_pressure", "serial_spiro")
    assert problems(tmp_path, edge(tail=device + 'address = "COM3"\n'), registry) == []
    assert problems(tmp_path, edge(tail=device + 'address = "A4:C1:38:5E:21:0F"\nuser = 1\n'),
                    registry) == [
        'devices[0].address: must be a serial port like "/dev/ttyUSB0" or "COM3", '
        'got "A4:C1:38:5E:21:0F"',
        "devices[0].user: is only used by ble drivers (driver serial_spiro is serial)"]


def test_devices_must_be_an_array_of_tables(tmp_path):
    text = edge(tail=DEVICE.replace("[[devices]]", "[devices]"))
    assert problems(tmp_path, text) == [
        "devices: must be an array of tables ([[devices]]), got a table"]


def test_outbox_size_must_be_positive(tmp_path):
    assert problems(tmp_path, edge(tail="[outbox]\nmax_megabytes = 0\n")) == [
        "outbox.max_megabytes: must be a number above 0, got 0"]


def test_booleans_are_not_numbers(tmp_path):
    # true == 1 in Python: it would pass both range checks if it counted as a number
    assert problems(tmp_path, edge(tail="[outbox]\nmax_megabytes = true\n" + DEVICE
                                        + "user = true\n")) == [
        "outbox.max_megabytes: must be a number above 0, got true",
        "devices[0].user: must be an integer between 1 and 254, got true"]


def test_odd_keys_are_quoted_in_the_path(tmp_path):
    key, _ = one(tmp_path, central(tail='[modules."co pd"]\nenabled = true\n'))
    assert key == 'modules."co pd"'


def test_every_problem_is_reported_in_one_run(tmp_path):
    text = central(
        top='gatway = "gw-1"',
        broker='url = "mqtt://localhost:70000"\npassword = "hunter2"',
        tail='[modules.copd]\nenabled = "yes"\n'
             '[modules.copd.limits.spo2]\nred_low = "ninety"\n'
             '[modules.cpod]\nenabled = true\n'
             '[exporters.csv]\nenabled = true\n',
    )
    expected_keys = ["gatway", "broker.url", "broker.password", "modules.copd.enabled",
                     "modules.copd.limits", "modules.cpod",
                     "exporters.csv.directory"]
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    found = check_file(path, REGISTRY)
    assert [p.key for p in found] == expected_keys
    with pytest.raises(ConfigError) as raised:
        load(path, REGISTRY)
    assert raised.value.problems == found
    assert str(raised.value).splitlines() == [str(p) for p in found]


# --- telemon config check -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["edge.toml", "central.toml"])
def test_cli_check_ok(name):
    result = CliRunner().invoke(cli, ["config", "check", str(EXAMPLES / name)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLES / name}: ok\n"


def test_cli_check_reports_problems_on_stderr(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(central(tail='[modules.copd]\nenabled = "yes"\n[exporters.xml]\n'),
                    encoding="utf-8")
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        'modules.copd.enabled: must be true or false, got "yes"',
        "exporters.xml: unknown exporter (installed exporters: "
        f"{', '.join(plugin_manager.get()[1].exporters)})",
        f"{path}: 2 problem(s)",
    ]


def test_cli_check_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: no such file" in result.stderr
