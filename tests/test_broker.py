"""The embedded MQTT broker (telemon.broker: iotcore/rumqttd in a child process) with real
paho-mqtt 2 clients over MQTT 5 and the real edge gateway; the `telemon broker` command as a
real process; and examples/mosquitto.conf run by a real Mosquitto with the ACL from
docs/brokers.md."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from test_edge_mqtt import GW, ORG, ids_in, make_gateway, obs, states

from telemon import mqtt
from telemon.broker import (
    SEGMENTS,
    BrokerError,
    EmbeddedBroker,
    broker_command,
    free_port,
    mqtt_connect_succeeds,
    port_taken,
)
from telemon.config import BrokerConfig, SecretRef
from telemon.edge import Gateway
from telemon.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent
V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
# tests/mosquitto.py (Subscriber, Mosquitto) is imported inside the tests, as in test_edge_mqtt:
# imported here, it would be loaded before test_edge_mqtt registers it as a pytest plugin,
# and pytest warns that it can no longer rewrite its asserts.


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with EmbeddedBroker(data=tmp_path_factory.mktemp("broker")) as running:
        yield running


class Client:
    """A paho client (MQTT 5 unless told) that publishes at QoS 1 and records its CONNACK and
    PUBACK reason codes."""

    def __init__(self, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, will: tuple[str, bytes] | None = None,
                 protocol: MQTTProtocolVersion = V5) -> None:
        self.connack = None
        self.pubacks: dict[int, object] = {}
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.pubacks.update(
            {mid: reason})
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self.connack = reason
        self.connected.set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False):
        """Publish at QoS 1 and return the PUBACK's reason code (or 0 for MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()
        return self.pubacks.get(info.mid)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def payloads(messages) -> list[bytes]:
    return [m.payload for m in messages]


def retained(port: int, topic: str) -> list[bytes]:
    """What a new subscriber to `topic` receives with the retain flag."""
    from mosquitto import Subscriber

    late = Subscriber(port, [topic], client_id=f"late-{time.monotonic_ns()}", clean=True)
    late.start()
    try:
        late.wait_for(lambda ms: ms, 2)
        return [m.payload for m in late.messages if m.retain]
    finally:
        late.stop()


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # an fd may close between listdir and readlink
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                if table == "tcp":
                    address = socket.inet_ntoa(bytes.fromhex(address)[::-1])
                found.add((address, int(port, 16)))
    return found


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- the embedded broker with MQTT 5 clients ----------------------------------------------

def test_publish_and_subscribe_at_qos_1(broker):
    from mosquitto import Subscriber

    subscriber = Subscriber(broker.port, ["test/qos1/#"], client_id="qos1-sub",
                            clean=True).start()
    publisher = Client(broker.port, "qos1-pub")
    try:
        assert publisher.connack == 0 and not publisher.connack.is_failure
        sent = [f"reading {i}".encode() for i in range(50)]
        reasons = [publisher.publish(f"test/qos1/{i % 3}", p) for i, p in enumerate(sent)]
        assert all(r is not None and not r.is_failure for r in reasons)
        assert subscriber.wait_for(lambda ms: len(ms) >= 50, 5)
        assert payloads(subscriber.messages) == sent  # all, once, in order
        assert {m.qos for m in subscriber.messages} == {1}
        # rumqttd's default limit is 20 KiB; a batch from the edge is up to 128 KiB
        large = os.urandom(1_000_000)
        assert not publisher.publish("test/qos1/large", large).is_failure
        assert subscriber.wait_for(lambda ms: ms[-1].payload == large, 5)
    finally:
        publisher.stop()
        subscriber.stop()


def test_shared_subscription_splits_the_messages(broker):
    from mosquitto import Subscriber

    org = "org-shared"
    group = mqtt.central_subscription(org)
    assert group == f"$share/central-{org}/telemon/v1/{org}/+/obs"
    workers = [Subscriber(broker.port, [group], client_id=f"central-{org}-{n}",
                          clean=True).start() for n in (1, 2)]
    publisher = Client(broker.port, "shared-pub")
    try:
        sent = {f"batch {i}".encode() for i in range(200)}
        for i, payload in enumerate(sorted(sent)):
            publisher.publish(mqtt.obs_topic(org, f"gw-{i % 2}"), payload)
        assert workers[0].wait_for(
            lambda _: sum(len(w.messages) for w in workers) >= 200, 10)
        time.sleep(0.2)  # any duplicate would arrive by now
        first, second = (payloads(w.messages) for w in workers)
        assert len(first) + len(second) == 200  # each message to one worker only
        assert set(first) | set(second) == sent
        assert len(first) >= 50 and len(second) >= 50  # split (measured: 100 each)
    finally:
        publisher.stop()
        for worker in workers:
            worker.stop()


def test_retained_status_and_last_will(broker):
    from mosquitto import Subscriber

    topic = mqtt.status_topic(ORG, "gw-will")
    watcher = Subscriber(broker.port, [topic], client_id="will-watcher", clean=True).start()
    gateway = Client(broker.port, "gw-will", will=(topic, b"offline"))
    try:
        assert not gateway.publish(topic, b"online", retain=True).is_failure
        assert retained(broker.port, topic) == [b"online"]
        gateway.client.loop_stop()
        gateway.client.socket().close()  # gone without a DISCONNECT: the broker sends the will
        assert watcher.wait_for(lambda ms: payloads(ms)[-1:] == [b"offline"], 5)
        assert retained(broker.port, topic) == [b"offline"]
    finally:
        watcher.stop()


def test_a_persistent_session_gets_what_was_queued_while_away(broker):
    from mosquitto import Subscriber

    first = Subscriber(broker.port, ["test/away/#"], client_id="away-sub").start()
    first.stop()  # DISCONNECT, session kept (expiry 3600 s)
    publisher = Client(broker.port, "away-pub")
    sent = [f"queued {i}".encode() for i in range(500)]
    for payload in sent:
        publisher.publish("test/away/x", payload)
    publisher.stop()
    back = Subscriber(broker.port, ["test/away/#"], client_id="away-sub").start()
    try:
        assert back.wait_for(lambda ms: len(ms) >= 500, 10)
        time.sleep(0.2)
        assert payloads(back.messages) == sent
    finally:
        back.stop()


def test_the_backlog_of_an_absent_subscriber_is_capped(tmp_path):
    """The router keeps at most `backlog_megabytes` per subscription filter: a subscriber
    that falls further behind gets only the newest messages (docs/brokers.md)."""
    from mosquitto import Subscriber

    segment = 16 * 1024
    with EmbeddedBroker(data=tmp_path, backlog_megabytes=SEGMENTS * segment / 2**20) as small:
        assert f"max_segment_size = {segment}\n" in small.config_path.read_text()
        Subscriber(small.port, ["test/cap/#"], client_id="cap-sub").start().stop()
        publisher = Client(small.port, "cap-pub")
        size = 1024
        for i in range(400):
            publisher.publish("test/cap/x", b"%06d" % i + b"x" * (size - 6))
        publisher.stop()
        back = Subscriber(small.port, ["test/cap/#"], client_id="cap-sub").start()
        back.wait_for(lambda ms: ms and ms[-1].payload.startswith(b"000399"), 5)
        time.sleep(0.2)
        back.stop()
    numbers = [int(m.payload[:6]) for m in back.messages]
    assert numbers == list(range(numbers[0], 400))  # the newest, without gaps
    assert numbers[0] > 0  # the oldest were dropped
    assert len(numbers) * size <= SEGMENTS * segment
    assert len(numbers) * (size + 64) >= (SEGMENTS - 1) * segment


def test_the_edge_gateway_publishes_through_the_embedded_broker(tmp_path, broker):
    from mosquitto import Subscriber

    subscriber = Subscriber(broker.port, [f"telemon/v1/{ORG}/{GW}/#"],
                            client_id="edge-sub", clean=True).start()
    records = [obs(i, device=f"dev-{i % 3}") for i in range(300)]
    try:
        with make_gateway(tmp_path, broker.url) as gateway:
            assert gateway.submit(records).accepted
            gateway.start()
            assert gateway.wait_drained(10)
            assert subscriber.wait_for(lambda ms: len(ids_in(ms)) >= 300, 10)
            assert gateway.delivered == 300
            assert gateway.protocol == mqtt.MQTTv5  # no fallback to 3.1.1
        assert subscriber.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 5)
    finally:
        subscriber.stop()
    assert ids_in(subscriber.messages) == [r.id for r in records]  # every one, once, in order
    assert "online" in states(subscriber.messages)


# --- listeners, life cycle and errors -------------------------------------------------------

def test_listens_on_the_loopback_only_and_opens_no_other_port(broker):
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert listening_sockets(broker.pid) == {("127.0.0.1", broker.port)}
    # the whole of 127/8 reaches this machine: a 0.0.0.0 listener would answer on 127.0.0.2
    assert not mqtt_connect_succeeds("127.0.0.2", broker.port, V5)
    assert mqtt_connect_succeeds("127.0.0.1", broker.port, V5)
    assert broker.log_path.read_text() == ""  # rumqttd's per-packet error lines silenced


def test_mqtt_3_1_1_is_served_on_its_own_port(tmp_path):
    from mosquitto import Subscriber

    with EmbeddedBroker(data=tmp_path, mqtt311_port=0) as both:
        assert listening_sockets(both.pid) == {("127.0.0.1", both.port),
                                               ("127.0.0.1", both.mqtt311_port)}
        assert both.url_mqtt311 == f"mqtt://127.0.0.1:{both.mqtt311_port}"
        assert mqtt_connect_succeeds("127.0.0.1", both.mqtt311_port, V311)
        # rumqttd drops a client of the other version without a CONNACK
        assert not mqtt_connect_succeeds("127.0.0.1", both.mqtt311_port, V5, timeout=0.5)
        assert not mqtt_connect_succeeds("127.0.0.1", both.port, V311, timeout=0.5)
        subscriber = Subscriber(both.port, ["test/mixed"], client_id="v5-sub",
                                clean=True).start()
        old = Client(both.mqtt311_port, "v311-pub", protocol=V311)
        old.publish("test/mixed", b"from 3.1.1")
        old.stop()
        assert subscriber.wait_for(lambda ms: payloads(ms) == [b"from 3.1.1"], 5)
        subscriber.stop()


def test_stop_terminates_and_reaps_the_child(tmp_path):
    embedded = EmbeddedBroker().start()
    pid, port, data = embedded.pid, embedded.port, embedded.data
    assert embedded.running and (data / "broker.toml").exists()
    embedded.stop()
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped: not even a zombie
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not embedded.running and embedded.pid is None
    assert not port_taken(port) and not mqtt_connect_succeeds("127.0.0.1", port, V5)
    assert not data.exists()  # the temporary folder it made is removed
    embedded.stop()  # twice is harmless
    with EmbeddedBroker(port) as again:  # the same port can be used straight away
        assert again.port == port


def test_the_child_exits_when_its_parent_dies(tmp_path):
    code = ("import os, signal, sys\n"
            "from telemon.broker import EmbeddedBroker\n"
            "b = EmbeddedBroker(data=sys.argv[1]).start()\n"
            "print(b.pid, b.port, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=30)
    assert parent.returncode == -signal.SIGKILL, parent.stdout + parent.stderr
    pid, port = map(int, parent.stdout.split())
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid), f"broker {pid} outlived its parent:\n{(tmp_path / 'broker.log').read_text()}"
    assert not mqtt_connect_succeeds("127.0.0.1", port, V5)


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for arguments in ({"port": port}, {"mqtt311_port": port}):
            embedded = EmbeddedBroker(data=tmp_path, **arguments)
            with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
                embedded.start()
            assert embedded.pid is None and not embedded.running


def test_a_child_that_dies_at_start_is_reported_with_its_output(tmp_path):
    class BrokenConfig(EmbeddedBroker):
        def config_text(self) -> str:
            return "id = 0\n[router\n"

    embedded = BrokenConfig(data=tmp_path)
    with pytest.raises(BrokerError, match="exited with code 1 at start") as error:
        embedded.start()
    assert "TOML parse error" in str(error.value)
    assert str(tmp_path / "broker.log") in str(error.value)
    assert not embedded.running


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="port must be between 1 and 65535"):
        EmbeddedBroker(70000)
    with pytest.raises(ValueError, match="backlog_megabytes must be at least"):
        EmbeddedBroker(backlog_megabytes=0.001)
    with pytest.raises(ValueError, match="different ports"):
        EmbeddedBroker(18830, mqtt311_port=18830)


# --- telemon broker ------------------------------------------------------------------------

def read_until(process: subprocess.Popen, text: str, timeout: float) -> str:
    """The process's stdout up to and including `text` (or all of it, after `timeout`)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.1)[0]:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_runs_until_a_signal(tmp_path, stop_signal):
    port, old_port = free_port(), free_port()
    code = "from telemon.broker import broker_command; broker_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port), "--data", str(tmp_path),
         "--mqtt311-port", str(old_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = read_until(process, f'url = "mqtt://127.0.0.1:{port}"', 15)
        assert f'url = "mqtt://127.0.0.1:{port}"' in output, output
        assert f"MQTT 3.1.1 clients: mqtt://127.0.0.1:{old_port}" in output
        assert mqtt_connect_succeeds("127.0.0.1", port, V5)
        assert (tmp_path / "broker.toml").exists()
        process.send_signal(stop_signal)
        assert process.wait(10) == 0
        assert "broker stopped" in read_until(process, "broker stopped", 5)
        assert not port_taken(port) and not port_taken(old_port)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_broker_command_errors():
    runner = CliRunner()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(broker_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.output
    result = runner.invoke(broker_command, ["--port", "0"])
    assert result.exit_code == 2 and "--port" in result.output


# --- examples/mosquitto.conf -----------------------------------------------------------------

def documented_acl() -> str:
    """The ACL file given in docs/brokers.md (its ```acl block)."""
    text = (ROOT / "docs" / "brokers.md").read_text()
    [block] = re.findall(r"```acl\n(.*?)```", text, re.DOTALL)
    return block


def adapt_example(folder: Path, port: int) -> str:
    """examples/mosquitto.conf with its paths and port moved into `folder`; every setting
    replaced must be there, and nothing else changes."""
    replacements = {
        "listener": f"{port} 127.0.0.1",
        "persistence_location": f"{folder}/",
        "password_file": str(folder / "passwd"),
        "acl_file": str(folder / "acl"),
        "log_dest": f"file {folder / 'mosquitto.log'}",
    }
    lines, replaced = [], set()
    for line in (ROOT / "examples" / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in replacements and not line.startswith("#"):
            assert key not in replaced, f"{key} twice in the example"
            line = f"{key} {replacements[key]}"
            replaced.add(key)
        lines.append(line)
    assert replaced == set(replacements)
    if os.geteuid() == 0:  # as root, mosquitto drops to user "mosquitto", which cannot write
        lines.append("user root")
    return "\n".join(lines) + "\n"


def test_example_mosquitto_conf_runs_and_the_documented_acl_holds(tmp_path):
    from mosquitto import BINARY, Mosquitto, Subscriber

    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(BINARY).exists() or not Path(passwd_tool).exists():
        pytest.fail("this test needs Mosquitto: apt-get install mosquitto")
    folder = tmp_path / "mosquitto"
    broker = Mosquitto(folder)  # its folder, port, start and stop; the config is the example's
    broker.config.write_text(adapt_example(folder, broker.port))
    central_user = f"central-{ORG}"
    for user, password in ((central_user, "central-pw"), (GW, "gateway-pw")):
        subprocess.run([passwd_tool, "-b", *(["-c"] if user == central_user else []),
                        str(folder / "passwd"), user, password], check=True,
                       capture_output=True)
    (folder / "acl").write_text(documented_acl())
    (tmp_path / "gateway-password").write_text("gateway-pw\n")
    broker.start()
    central = None
    try:
        assert "Error" not in broker.log(), broker.log()
        anonymous = Client(broker.port, "anonymous")
        assert anonymous.connack is not None and anonymous.connack.is_failure  # not authorised
        anonymous.stop()

        # the central: its own client id, the organisation's shared subscription, persistent
        central = Subscriber(broker.port, [mqtt.central_subscription(ORG),
                                           mqtt.status_subscription(ORG)],
                             client_id=f"{central_user}-1")
        central.client.username_pw_set(central_user, "central-pw")
        central.start()
        # a gateway may not publish under another gateway's topic (PUBACK 0x87)
        intruder = Client(broker.port, GW, username=GW, password="gateway-pw")
        assert not intruder.connack.is_failure
        refused = intruder.publish(mqtt.obs_topic(ORG, "gw-someone-else"), b"{}")
        assert refused.is_failure and refused.value == 0x87
        intruder.stop()

        password = SecretRef.parse(f"file:{tmp_path}/gateway-password")
        broker_config = BrokerConfig(url=broker.url, username=GW, password=password,
                                     client_id=None)
        with Gateway(organisation=ORG, gateway=GW, broker=broker_config,
                     outbox=Outbox(tmp_path / "outbox.sqlite")) as gateway:
            gateway.submit([obs(i) for i in range(40)])
            gateway.start()
            assert gateway.wait_drained(10)
            assert central.wait_for(lambda ms: len(ids_in(ms)) >= 40, 10)
            # the central is away; the broker acknowledges, then dies without saving (kill -9)
            central.stop()
            gateway.submit([obs(i) for i in range(40, 60)])
            assert gateway.wait_drained(10)
        broker.kill()
        broker.start()  # autosave_on_changes: what was acknowledged is in the saved state
        central.client.reconnect()
        central.client.loop_start()
        assert central.wait_for(lambda ms: len(set(ids_in(ms))) >= 60, 10), broker.log()
        assert set(ids_in(central.messages)) == {f"obs-dev-1-{i}" for i in range(60)}
        assert "online" in states(central.messages)
    finally:
        if central is not None:
            central.stop()
        broker.stop()
