"""Transport security against a real Mosquitto 2.0: TLS with the broker verified through the
config's ca_file, one credential per gateway from `telemon gateway provision` (a password in
Mosquitto's own hash format, or a client certificate), the ACL it prints, and the central's
own check when a broker lets everything through.

Test certificates are made at test time (openssl CLI, as tests/test_edge_mqtt.py does).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import re
import shutil
import socket
import stat
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_central import count, enrol, reading, wait_until
from test_central import write_config as write_central_config
from test_edge_mqtt import make_certificates

from telemon import config, mqtt, plugin_manager, provision, store, wire
from telemon.backoff import Backoff
from telemon.central import Central
from telemon.cli import build_cli
from telemon.config import BrokerConfig, SecretRef
from telemon.edge import Gateway
from telemon.outbox import Outbox

pytest_plugins = ["mosquitto"]

ORG = "kommune-0999"
CENTRAL_USER = f"central-{ORG}"
PASSWD_TOOL = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


# --- helpers --------------------------------------------------------------------------------

def central_toml(folder: Path, url: str = "mqtt://127.0.0.1:1883") -> Path:
    return write_central_config(folder, url)


def run_provision(folder: Path, *args: str):
    """`telemon gateway provision ...` against a central config in `folder`."""
    toml = folder / "central.toml"
    if not toml.exists():
        central_toml(folder)
    return CliRunner().invoke(build_cli(), ["gateway", "provision", *args, "--config",
                                            str(toml), "--by", "admin-1"])


def printed_block(output: str, heading: str) -> str:
    """The lines printed under a "# <heading>..." comment, up to the next comment line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {heading}")) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def outbox(folder: Path, name: str) -> Outbox:
    return Outbox(folder / f"{name}.outbox", max_megabytes=64)


def gateway(folder: Path, name: str, broker: BrokerConfig) -> Gateway:
    return Gateway(organisation=ORG, gateway=name, broker=broker, outbox=outbox(folder, name),
                   backoff=Backoff(0.05, 0.3, random.Random(1)))


def secured_broker(folder: Path, server: tuple[Path, Path, Path], *, passwd: str = "",
                   acl: str = "", client_ca: Path | None = None):
    """A Mosquitto with a TLS listener for gateways (password or client-certificate logins)
    and a plain loopback listener for the central's subscriber; no anonymous clients."""
    from mosquitto import Mosquitto, free_port

    _ca, cert, key = server
    (folder / "passwd").write_text(passwd)
    (folder / "acl").write_text(acl)
    central_port = free_port()
    tls = [f"certfile {cert}", f"keyfile {key}"]
    if client_ca is not None:
        tls += [f"cafile {client_ca}", "require_certificate true",
                "use_identity_as_username true"]
    broker = Mosquitto(folder / "broker", extra="\n".join([
        *tls, f"listener {central_port} 127.0.0.1", "allow_anonymous false",
        f"password_file {folder / 'passwd'}", f"acl_file {folder / 'acl'}"]))
    broker.central_port = central_port
    broker.start()  # it waits for the first listener; the second may open a moment later
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", central_port), timeout=0.2):
            return broker
        time.sleep(0.01)
    broker.stop()
    raise TimeoutError(f"mosquitto did not listen on {central_port}:\n{broker.log()}")


def central_subscriber(broker, password: str):
    from mosquitto import Subscriber

    subscriber = Subscriber(broker.central_port, [mqtt.central_subscription(ORG)],
                            client_id=f"{CENTRAL_USER}-1", clean=True)
    subscriber.client.username_pw_set(CENTRAL_USER, password)
    return subscriber.start()


def ids_in(messages) -> set[str]:
    return {record.id for message in messages
            for record in wire.decode_message(message.payload).records}


CENTRAL_ACL = (f"user {CENTRAL_USER}\ntopic read telemon/v1/{ORG}/+/obs\n"
               f"topic read telemon/v1/{ORG}/+/status\n")


# --- the Mosquitto password hash --------------------------------------------------------------

def test_password_line_is_what_mosquitto_passwd_writes(tmp_path):
    """Same salt, same password: the same `$7$` line as the real tool."""
    subprocess.run([PASSWD_TOOL, "-c", "-b", str(tmp_path / "passwd"), "gw-1", "pw-ÆØÅ-1"],
                   check=True, capture_output=True)
    real = (tmp_path / "passwd").read_text().strip()
    salt = base64.b64decode(real.split("$")[3])
    assert provision.mosquitto_password_line("gw-1", "pw-ÆØÅ-1", salt=salt) == real
    # a fresh salt each time: two lines for one password differ
    assert (provision.mosquitto_password_line("gw-1", "x")
            != provision.mosquitto_password_line("gw-1", "x"))


# --- provisioning: the command ------------------------------------------------------------------

def test_provision_writes_the_password_owner_only_and_audits_without_it(tmp_path):
    out = tmp_path / "secrets" / "gw-1.password"
    out.parent.mkdir()
    result = run_provision(tmp_path, "gw-1", "--password-file", str(out))
    assert result.exit_code == 0, result.output
    password = out.read_text().strip()
    assert len(password) >= 40 and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert password not in result.output  # written, not printed
    assert f'password = "file:{out}"' in result.output
    acl = printed_block(result.output, "Mosquitto ACL")
    assert acl.splitlines() == ["user gw-1", f"topic write telemon/v1/{ORG}/gw-1/obs",
                                f"topic write telemon/v1/{ORG}/gw-1/status",
                                f"topic read telemon/v1/{ORG}/gw-1/cmd"]
    line = printed_block(result.output, "Mosquitto password").strip()
    salt = base64.b64decode(line.split("$")[3])
    assert line == provision.mosquitto_password_line("gw-1", password, salt=salt)

    db = store.open_database(store.central_database_path(tmp_path / "data"))
    try:
        rows = db.execute("SELECT actor, action, patient, detail FROM audit").fetchall()
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert [row[:3] for row in rows] == [("admin-1", "gateway.provision", None)]
    assert '"gateway":"gw-1"' in rows[0][3] and '"method":"password"' in rows[0][3]
    assert password not in dump and line.split("$")[4] not in dump  # no secret, no hash


def test_provision_without_a_file_prints_the_password_once(tmp_path):
    result = run_provision(tmp_path, "gw-2")
    assert result.exit_code == 0, result.output
    password = printed_block(result.output, "the password").strip()
    assert len(password) >= 40 and result.output.count(password) == 1
    assert password != printed_block(run_provision(tmp_path, "gw-2").output,
                                     "the password").strip()  # new each time


def test_provision_refuses_bad_input_with_a_reason(tmp_path):
    bad_id = run_provision(tmp_path, "gw/1")
    assert bad_id.exit_code == 2 and "gateway id 'gw/1' must be" in bad_id.output
    no_ca = run_provision(tmp_path, "gw-1", "--cert")
    assert no_ca.exit_code == 2 and "--cert needs --ca-cert, --ca-key and --cert-dir" in (
        no_ca.output)
    stray = run_provision(tmp_path, "gw-1", "--ca-cert", str(tmp_path / "ca.pem"))
    assert stray.exit_code == 2 and "with --cert only" in stray.output
    missing = run_provision(tmp_path, "gw-1", "--cert", "--ca-cert", str(tmp_path / "no.pem"),
                            "--ca-key", str(tmp_path / "no.key"), "--cert-dir",
                            str(tmp_path / "certs"))
    assert missing.exit_code == 1 and "cannot read the CA" in missing.output
    first, second = make_certificates(_mkdir(tmp_path / "a")), make_certificates(
        _mkdir(tmp_path / "b"))
    mismatched = run_provision(tmp_path, "gw-1", "--cert", "--ca-cert", str(first[0]),
                               "--ca-key", str(second[0].with_suffix(".key")), "--cert-dir",
                               str(tmp_path / "certs"))
    assert mismatched.exit_code == 1 and "is not the key of the CA certificate" in (
        mismatched.output)
    assert not (tmp_path / "certs" / "gw-1.key").exists()
    db = store.open_database(store.central_database_path(tmp_path / "data"))
    try:
        assert count(db, "audit") == 0  # nothing provisioned, nothing audited
    finally:
        db.close()


def test_only_an_administrator_provisions_once_staff_are_registered(tmp_path):
    central_toml(tmp_path)
    for name, role in (("admin-1", "administrator"), ("nurse-1", "nurse")):
        added = CliRunner().invoke(build_cli(), ["staff", "add", name, "--role", role,
                                                 "--config", str(tmp_path / "central.toml"),
                                                 "--by", "admin-1", "--reason", "new staff"])
        assert added.exit_code == 0, added.output
    refused = CliRunner().invoke(build_cli(), [
        "gateway", "provision", "gw-1", "--password-file", str(tmp_path / "pw"), "--config",
        str(tmp_path / "central.toml"), "--by", "nurse-1"])
    assert refused.exit_code == 1 and "lacks the right enrolment.change" in refused.output
    assert not (tmp_path / "pw").exists()
    assert run_provision(tmp_path, "gw-1").exit_code == 0  # by admin-1


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# --- config and client factory ------------------------------------------------------------------

def test_broker_tls_keys_in_the_config(tmp_path):
    registry = plugin_manager.get()[1]

    def problems(broker_lines: str) -> list[str]:
        text = (f'role = "central"\norganisation = "{ORG}"\n[broker]\n{broker_lines}\n'
                f'[storage]\npath = "{tmp_path}"\n')
        return [str(p) for p in config.validate(tomllib.loads(text),
                                                 registry)[1]]

    good = ('url = "mqtts://broker.example:8883"\nca_file = "/etc/telemon/ca.pem"\n'
            'client_cert = "/etc/telemon/gw.pem"\nclient_key = "/etc/telemon/gw.key"')
    assert problems(good) == []
    assert problems('url = "mqtt://broker.example"\nca_file = "/etc/ca.pem"') == [
        "broker.ca_file: is only used with TLS: the url must be mqtts://"]
    assert problems('url = "mqtts://b.example"\nclient_cert = "/etc/gw.pem"') == [
        "broker.client_key: is required with client_cert (a client certificate and its key)"]
    assert problems('url = "mqtts://b.example"\nca_file = "ca.pem"') == [
        'broker.ca_file: must be an absolute path, got "ca.pem"']


def test_make_client_says_which_tls_file_is_unusable(tmp_path):
    (tmp_path / "not.pem").write_text("not a certificate\n")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "not.pem"):
        broker = BrokerConfig("mqtts://broker.example:8883", None, None, None, ca_file=ca_file)
        with pytest.raises(OSError, match=f"cannot be used \\(ca_file {ca_file}; PEM files"):
            mqtt.make_client(broker, "gw-1")
    # an encrypted key is refused, not asked for on a terminal the service does not have
    certificate = make_certificates(_mkdir(tmp_path / "ca"))[1]
    subprocess.run(["openssl", "pkey", "-in", str(certificate.with_suffix(".key")), "-aes256",
                    "-passout", "pass:x", "-out", str(tmp_path / "encrypted.key")], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    broker = BrokerConfig("mqtts://broker.example:8883", None, None, None,
                          client_cert=certificate, client_key=tmp_path / "encrypted.key")
    named = re.escape(f"client_key {tmp_path / 'encrypted.key'}; PEM files")
    with pytest.raises(OSError, match=named):
        mqtt.make_client(broker, "gw-1")


# --- against Mosquitto with TLS and the provisioned ACL -------------------------------------

@pytest.fixture
def server_certificates(tmp_path):
    return make_certificates(_mkdir(tmp_path / "server-ca"))


def test_gateways_with_provisioned_passwords_over_tls(tmp_path, server_certificates, caplog):
    """gw-1 (its password file and ACL lines from `telemon gateway provision`) delivers over
    TLS, verifying the broker with ca_file; one with the wrong CA never connects; one
    publishing as gw-2 with gw-1's login is refused (PUBACK 0x87) and keeps its records."""
    secrets_dir = _mkdir(tmp_path / "secrets")
    result = run_provision(tmp_path, "gw-1", "--password-file", str(secrets_dir / "gw-1"))
    assert result.exit_code == 0, result.output
    central_line = provision.mosquitto_password_line(CENTRAL_USER, "central-pw")
    broker = secured_broker(
        tmp_path, server_certificates,
        passwd=printed_block(result.output, "Mosquitto password") + central_line + "\n",
        acl=printed_block(result.output, "Mosquitto ACL") + CENTRAL_ACL)
    subscriber = None
    try:
        assert "Error" not in broker.log(), broker.log()
        subscriber = central_subscriber(broker, "central-pw")
        url = f"mqtts://localhost:{broker.port}"
        login = {"username": "gw-1", "password": SecretRef.parse(f"file:{secrets_dir}/gw-1")}
        with gateway(tmp_path, "gw-1", BrokerConfig(
                url, **login, client_id=None, ca_file=server_certificates[0])) as home:
            home.submit([reading(i, "p-0001", "gw-1") for i in range(30)])
            home.start()
            assert home.wait_drained(10)
        assert subscriber.wait_for(lambda ms: len(ids_in(ms)) == 30, 10)
        assert ids_in(subscriber.messages) == {f"gw-1-p-0001-spo2-{i}" for i in range(30)}

        other_ca = make_certificates(_mkdir(tmp_path / "other-ca"))[0]
        caplog.set_level(logging.ERROR, logger="telemon.mqtt")
        with gateway(tmp_path, "gw-1b", BrokerConfig(
                url, **login, client_id=None, ca_file=other_ca)) as home:
            home.submit([reading(i, "p-0001", "gw-1b") for i in range(5)])
            home.start()
            assert not home.wait_connected(1.5)
            assert home.outbox.stats().depth == 5
        assert any(f"TLS with broker localhost:{broker.port} failed (the broker's certificate"
                   f" must be signed by a CA in {other_ca})" in r.getMessage()
                   and "certificate verify failed" in r.getMessage() for r in caplog.records)

        # gw-1's login, but it reports as gw-2 (topic telemon/v1/<org>/gw-2/obs)
        caplog.set_level(logging.ERROR, logger="telemon.edge")
        with gateway(tmp_path, "gw-2", BrokerConfig(
                url, **login, client_id="gw-1-impostor",
                ca_file=server_certificates[0])) as impostor:
            impostor.submit([reading(i, "p-0002", "gw-2") for i in range(10)])
            impostor.start()
            assert wait_until(lambda: any(
                "broker refused a message of 10 record(s) (Not authorized)" in r.getMessage()
                for r in caplog.records), 5), broker.log()  # its PUBACK said 0x87
            time.sleep(0.3)
            assert impostor.outbox.stats().depth == 10 and impostor.delivered == 0
        assert not any(m.topic.endswith("/gw-2/obs") for m in subscriber.messages)
    finally:
        if subscriber is not None:
            subscriber.stop()
        broker.stop()


def test_gateway_with_a_provisioned_client_certificate(tmp_path, server_certificates,
                                                       caplog):
    """`--cert`: the broker takes the certificate's common name as the user name, so the same
    ACL lines confine it; no password is involved."""
    pytest.importorskip("cryptography", reason="--cert needs the cryptography package")
    gateway_ca = make_certificates(_mkdir(tmp_path / "gateway-ca"))
    gateway_ca_key = gateway_ca[0].with_name("ca.key")
    certs = tmp_path / "certs"
    result = run_provision(tmp_path, "gw-1", "--cert", "--ca-cert", str(gateway_ca[0]),
                           "--ca-key", str(gateway_ca_key), "--cert-dir", str(certs))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((certs / "gw-1.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in result.output and "Mosquitto password" not in result.output
    broker = secured_broker(
        tmp_path, server_certificates,
        passwd=provision.mosquitto_password_line(CENTRAL_USER, "central-pw") + "\n",
        acl=printed_block(result.output, "Mosquitto ACL") + CENTRAL_ACL,
        client_ca=gateway_ca[0])
    subscriber = None
    try:
        subscriber = central_subscriber(broker, "central-pw")
        caplog.set_level(logging.ERROR, logger="telemon.edge")
        url = f"mqtts://localhost:{broker.port}"
        tls = {"ca_file": server_certificates[0], "client_cert": certs / "gw-1.pem",
               "client_key": certs / "gw-1.key"}
        with gateway(tmp_path, "gw-1", BrokerConfig(url, None, None, None, **tls)) as home:
            home.submit([reading(i, "p-0001", "gw-1") for i in range(12)])
            home.start()
            assert home.wait_drained(10), broker.log()
        assert subscriber.wait_for(lambda ms: len(ids_in(ms)) == 12, 10)
        with gateway(tmp_path, "gw-2", BrokerConfig(url, None, None, "gw-1-impostor",
                                                    **tls)) as impostor:
            impostor.submit([reading(0, "p-0002", "gw-2")])
            impostor.start()
            assert wait_until(lambda: any(
                "broker refused a message of 1 record(s) (Not authorized)" in r.getMessage()
                for r in caplog.records), 5), broker.log()
            assert impostor.outbox.stats().depth == 1 and impostor.delivered == 0
        # without a client certificate the TLS listener lets nobody in
        with gateway(tmp_path, "gw-3", BrokerConfig(url, None, None, None,
                                                    ca_file=server_certificates[0])) as bare:
            bare.start()
            assert not bare.wait_connected(1.5)
    finally:
        if subscriber is not None:
            subscriber.stop()
        broker.stop()


def test_a_broker_that_allows_everything_does_not_let_a_gateway_report_for_others(
        tmp_path, mosquitto):
    """Misconfigured broker (anonymous, no ACL): the central still quarantines readings for a
    patient not bound to the gateway, and readings naming another gateway than the topic's."""
    cfg = config.load(central_toml(tmp_path, mosquitto.url), plugin_manager.get()[1])
    db = store.open_database(store.central_database_path(cfg.storage.path))
    enrol(db, "p-0001", ("gw-1",))
    enrol(db, "p-0002", ("gw-2",))
    running = Central(cfg, plugin_manager.get()[1].modules, client_id="central-test-1",
                      backoff=Backoff(0.05, 0.3, random.Random(2)))
    running.start()
    try:
        assert running.wait_connected(10)
        anonymous = BrokerConfig(mosquitto.url, None, None, None)
        with gateway(tmp_path, "gw-1", anonymous) as home:
            home.submit([reading(0, "p-0001", "gw-1"), reading(1, "p-0002", "gw-1"),
                         reading(2, "p-0002", "gw-2")])  # names gw-2, sent on gw-1's topic
            home.start()
            assert home.wait_drained(10)  # the broker took everything
        assert wait_until(lambda: count(db, "quarantine") == 2 and count(db, "observations"))
        assert [row[0] for row in db.execute("SELECT id FROM observations")] == [
            "gw-1-p-0001-spo2-0"]
        reasons = [row[0] for row in db.execute("SELECT reason FROM quarantine ORDER BY id")]
        assert reasons[0] == f"patient p-0002 is not bound to gateway gw-1 in organisation {ORG}"
        assert "names gateway gw-2 but came on the topic of gateway gw-1" in reasons[1]
    finally:
        running.close()
        db.close()
