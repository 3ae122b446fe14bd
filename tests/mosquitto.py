"""A real Mosquitto broker for tests: started on a free loopback port with a generated config,
killed (SIGKILL) and restarted on the same port and persistence file at will.

Use it from a test module with ``pytest_plugins = ["mosquitto"]``, then ask for the
`mosquitto` fixture (a running `Mosquitto`, stopped after the test) or build one with
`Mosquitto(folder)`. `Subscriber` is a small paho client that records what arrives.

The config sets what BROKERS.md says loses data when left at its defaults: no limit on
queued messages (`max_queued_messages 0`, `max_queued_bytes 0`), an explicit
`max_inflight_messages`, `persistence true` with the database in the test's folder, and
`autosave_on_changes true` with `autosave_interval 1`: the in-memory state is saved after
every change, so a SIGKILLed broker loses at most what changed during its last event-loop
pass (Mosquitto acknowledges a QoS 1 PUBLISH before it saves; see `test_edge_mqtt`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BINARY = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INSTALL_HINT = "install the Debian package: apt-get install mosquitto (make system-packages)"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One Mosquitto process; its folder keeps the config, the log and the persistence."""

    def __init__(self, folder: Path, port: int | None = None, *, max_inflight: int = 100,
                 extra: str = "", save_every_change: bool = True) -> None:
        if not Path(BINARY).exists():
            raise FileNotFoundError(f"mosquitto not found at {BINARY}: {INSTALL_HINT}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = self.folder / "mosquitto.conf"
        self.logfile = self.folder / "mosquitto.log"
        self.max_inflight = max_inflight
        self.save_every_change = save_every_change  # False: Mosquitto's default autosave
        self.configure(extra)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def configure(self, extra: str = "") -> None:
        """(Re)write the config; `extra` lines are appended (e.g. an acl_file). Takes effect
        at the next start."""
        self.config.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.folder}/",
            "persistence_file mosquitto.db",
            *(["autosave_on_changes true", "autosave_interval 1"]
              if self.save_every_change else []),
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight}",
            f"log_dest file {self.logfile}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            # as root, mosquitto drops to user "mosquitto", which cannot write here
            *(["user root"] if os.geteuid() == 0 else []),
            extra,
        ]) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start and wait until the port accepts connections (retrying while the port is
        briefly still held by the previous process)."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        deadline = time.monotonic() + timeout
        while True:
            seen = len(self.log())
            self.process = subprocess.Popen(
                [BINARY, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=0.2):
                    self.starts += 1
                    return self
                time.sleep(0.01)
            if self.process.poll() is None:
                self.kill()
                raise TimeoutError(f"mosquitto did not listen on {self.port}:\n{self.log()}")
            stderr = self.process.stderr.read().decode(errors="replace")
            self.process.stderr.close()
            if time.monotonic() >= deadline or "Address already in use" not in (
                    stderr + self.log()[seen:]):
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n"
                                   f"{stderr}\n{self.log()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final save of its state."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_pipe()

    def pause(self) -> None:
        """SIGSTOP: a hung broker; connections stay open, nothing is read or answered."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (saves its state), SIGKILL if it takes longer than 5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def restart(self) -> Mosquitto:
        self.kill()
        return self.start()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


@pytest.fixture
def mosquitto(tmp_path_factory) -> Iterator[Mosquitto]:
    """A running Mosquitto on a free loopback port, with its own persistence folder."""
    if not Path(BINARY).exists():
        pytest.fail(f"these tests need a real MQTT broker: {INSTALL_HINT}")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


class Subscriber:
    """A paho client that subscribes (QoS 1, MQTT 5, persistent session unless
    `clean=True`), reconnects by itself, and records every message it receives (in
    `messages`, unless `keep=False`; `on_message` is called with each first)."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "test-subscriber",
                 clean: bool = False, on_message=None, keep: bool = True) -> None:
        self.port, self.topics, self.clean, self.keep = port, topics, clean, keep
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self._callback = on_message
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.connected.set()

    def start(self, timeout: float = 10.0) -> Subscriber:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0 if self.clean else 3600
        self.client.connect("127.0.0.1", self.port, keepalive=10, clean_start=self.clean,
                            properties=properties)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError("subscriber did not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _userdata, flags, reason, _properties) -> None:
        if reason.is_failure:
            return
        self.connects += 1
        client.subscribe([(topic, 1) for topic in self.topics])  # SUBACK sets `connected`

    def _on_message(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        if self._callback is not None:
            self._callback(message)
        if self.keep:
            with self.lock:
                self.messages.append(message)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until predicate(messages) is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self.messages):
                    return True
            time.sleep(0.02)
        with self.lock:
            return bool(predicate(self.messages))
