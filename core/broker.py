"""The embedded MQTT broker: `telemon broker`, for the one-command demo and one machine.

It is rumqttd (the Rust broker inside the pip package iotcore, pinned exactly), run as a child
process so it can be stopped: rumqttd has no shutdown API, so `stop()` terminates the child and
reaps it. It speaks MQTT 5 (with shared subscriptions, retained messages, last wills and
persistent sessions) on one listener and, when asked, MQTT 3.1.1 on a second one: rumqttd
serves each protocol on its own port and drops a client of the other version without a
CONNACK. Measured facts behind the settings: shared/BROKERS.md and docs/brokers.md.

Settings, and why:

* 127.0.0.1 only (rumqttd's default is 0.0.0.0) and no console or metrics port: the embedded
  broker has no authentication, so nothing off this machine may reach it.
* rumqttd's logger is silenced: it logs an ERROR line for every packet routed.
* The router's commit log is capped at `backlog_megabytes` per subscription filter (in
  `SEGMENTS` segments; the oldest segment is dropped when a new one is needed), so memory
  stays bounded. The same cap bounds the backlog a disconnected persistent session or a slow
  subscriber can catch up on: one that falls more than `backlog_megabytes` behind loses the
  oldest messages silently (at least (SEGMENTS - 1) / SEGMENTS of the cap is always kept).
  With the default 64 MB, a stopped central can catch up on some 170,000 readings (about
  350 bytes each in the edge's batches, without raw frames).
* Nothing is kept on disk: stopping the broker loses queued messages, sessions and retained
  messages (the edge's outbox still holds whatever was not acknowledged). rumqttd also ignores
  the MQTT 5 Session Expiry Interval: sessions live until the broker stops. Production uses
  Mosquitto or an MQTT 5 cluster (docs/brokers.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

import click
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

HOST = "127.0.0.1"
SEGMENTS = 8
DEFAULT_BACKLOG_MEGABYTES = 64
# The edge publishes batches of up to 128 KiB, but a single larger record goes alone; a
# message over the limit gets its client disconnected. 1 MiB, as examples/mosquitto.conf.
MAX_PAYLOAD_BYTES = 2**20
MAX_CONNECTIONS = 10_000
MAX_INFLIGHT = 100  # unacknowledged QoS 1 messages towards one client
MIN_SEGMENT_BYTES = 1024  # rumqttd refuses smaller segments
CONFIG_NAME, LOG_NAME = "broker.toml", "broker.log"
INSTALL_HINT = "pip install iotcore==0.4.0"


class BrokerError(RuntimeError):
    """The embedded broker could not be started or stopped working."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (bound as rumqttd binds, with
    SO_REUSEADDR, so a port left in TIME_WAIT by a stopped broker counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
        return False


def port_in_use_message(port: int) -> str:
    return (f"cannot start the embedded MQTT broker: port {port} on {HOST} is already in use "
            f"(another broker?); choose another port")


def iotcore_version() -> str:
    try:
        return version("iotcore")
    except PackageNotFoundError:
        return "not installed"


class EmbeddedBroker:
    """rumqttd in a child process on 127.0.0.1: MQTT 5 on `port` (a free one when None), and
    MQTT 3.1.1 on `mqtt311_port` when that is given (0: a free one). `data` is the folder for
    its config (broker.toml) and log (broker.log); a temporary one, removed at stop, when None.

        with EmbeddedBroker() as broker:     # started, and a real MQTT CONNECT succeeded
            ... broker.url ...               # "mqtt://127.0.0.1:<port>"
        # stopped: child terminated and reaped, port released
    """

    def __init__(self, port: int | None = None, data: str | Path | None = None, *,
                 mqtt311_port: int | None = None,
                 backlog_megabytes: float = DEFAULT_BACKLOG_MEGABYTES) -> None:
        for name, value in (("port", port), ("mqtt311_port", mqtt311_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be between 1 and 65535 (0: a free one), "
                                 f"got {value}")
        self.segment_bytes = int(backlog_megabytes * 2**20) // SEGMENTS
        if self.segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"backlog_megabytes must be at least "
                             f"{SEGMENTS * MIN_SEGMENT_BYTES / 2**20:g}, got {backlog_megabytes}")
        self.port = port or free_port()
        self.mqtt311_port = None if mqtt311_port is None else mqtt311_port or free_port()
        if self.port == self.mqtt311_port:
            raise ValueError(f"MQTT 5 and MQTT 3.1.1 need different ports, both are {self.port}")
        self._owns_data = data is None
        self.data = Path(data) if data is not None else None
        self._process: subprocess.Popen | None = None

    # --- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The MQTT 5 listener, as `[broker] url` in central and edge configs."""
        return f"mqtt://{HOST}:{self.port}"

    @property
    def url_mqtt311(self) -> str | None:
        return None if self.mqtt311_port is None else f"mqtt://{HOST}:{self.mqtt311_port}"

    @property
    def config_path(self) -> Path | None:
        return None if self.data is None else self.data / CONFIG_NAME

    @property
    def log_path(self) -> Path | None:
        return None if self.data is None else self.data / LOG_NAME

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- life cycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Write the config, start the child and wait until it accepts an MQTT CONNECT.
        BrokerError (with the tail of the child's output) if it does not."""
        if self.running:
            raise BrokerError(f"the embedded broker is already running at {self.url}")
        if find_spec("iotcore") is None:
            raise BrokerError(f"the embedded MQTT broker needs the iotcore package: "
                              f"{INSTALL_HINT}")
        # checked here as well as in the child: a broker already on the port would answer
        # wait_ready's CONNECT before our child had even tried to listen
        for port in (self.port, self.mqtt311_port):
            if port is not None and port_taken(port):
                raise BrokerError(port_in_use_message(port))
        if self.data is None:
            self.data = Path(tempfile.mkdtemp(prefix="telemon-broker-"))
        self.data.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        with self.log_path.open("wb") as log:
            # stdin stays a pipe from us: the child exits when it closes (we exited or died).
            # -P: no working folder on sys.path, so no file there can shadow a package.
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "telemon.broker", str(self.config_path)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=self.data)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once every listener accepts a real MQTT CONNECT (of its protocol version);
        BrokerError if the child exits first or `timeout` seconds pass."""
        listeners = [(self.port, MQTTProtocolVersion.MQTTv5)]
        if self.mqtt311_port is not None:
            listeners.append((self.mqtt311_port, MQTTProtocolVersion.MQTTv311))
        deadline = time.monotonic() + timeout
        while listeners:
            if self._process is None:
                raise BrokerError("the embedded broker is not started")
            if (code := self._process.poll()) is not None:
                raise BrokerError(self._failure(code))
            if mqtt_connect_succeeds(HOST, *listeners[0], timeout=1.0):
                listeners.pop(0)
            elif time.monotonic() > deadline:
                raise BrokerError(f"the embedded broker did not accept an MQTT connection on "
                                  f"{HOST}:{listeners[0][0]} within {timeout:g} s"
                                  f"{self.log_tail()}")
            else:
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (SIGKILL after `timeout` s) and reap it. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            process.stdin.close()
        if self._owns_data and self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedBroker {self.url} {'running' if self.running else 'stopped'}>"

    # --- config and errors ----------------------------------------------------------------

    def config_text(self) -> str:
        """The rumqttd (0.20, inside iotcore 0.4.0) TOML config: see the module docstring.
        No [console], [prometheus], [metrics] or [ws] sections: no other ports."""
        listeners = [("v5", self.port)]
        if self.mqtt311_port is not None:
            listeners.append(("v4", self.mqtt311_port))
        lines = ["id = 0", "", "[router]", "id = 0",
                 f"max_connections = {MAX_CONNECTIONS}",
                 "max_outgoing_packet_count = 200",
                 f"max_segment_size = {self.segment_bytes}",
                 f"max_segment_count = {SEGMENTS}"]
        for kind, port in listeners:
            lines += ["", f"[{kind}.1]", f'name = "{kind}-1"', f'listen = "{HOST}:{port}"',
                      "next_connection_delay_ms = 1", f"[{kind}.1.connections]",
                      "connection_timeout_ms = 60000",
                      f"max_payload_size = {MAX_PAYLOAD_BYTES}",
                      f"max_inflight_count = {MAX_INFLIGHT}",
                      "dynamic_filters = true"]
        return "\n".join(lines) + "\n"

    def _failure(self, code: int) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        ports = [p for p in (self.port, self.mqtt311_port) if p is not None]
        if "Address already in use" in log:
            taken = next((p for p in ports if f"{HOST}:{p}:" in log), ports[0])
            return port_in_use_message(taken) + self.log_tail()
        return f"the embedded MQTT broker exited with code {code} at start{self.log_tail()}"

    def log_tail(self, characters: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace")[-characters:].strip()
        where = LOG_NAME if self._owns_data else self.log_path  # a temporary one is removed
        return f"\n--- end of {where} ---\n{tail}" if tail else ""


def mqtt_connect_succeeds(host: str, port: int, protocol: MQTTProtocolVersion,
                          timeout: float = 1.0) -> bool:
    """Whether an MQTT CONNECT of `protocol` to host:port is answered by a successful
    CONNACK within `timeout` seconds (then the client disconnects)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                         client_id=f"telemon-probe-{os.getpid()}-{time.monotonic_ns()}")
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not client.is_connected() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                return False
        return client.is_connected()
    except OSError:  # nothing listening yet, or the connection was dropped
        return False
    finally:
        if client.is_connected():
            client.disconnect()
            client.loop(timeout=0.05)  # send the DISCONNECT
        if (leftover := client.socket()) is not None:  # a refused or unanswered attempt
            leftover.close()


# --- the command ----------------------------------------------------------------------------

@click.command(name="broker")
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True,
              help="MQTT 5 port on 127.0.0.1.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for its config and log (default: a temporary one).")
@click.option("--mqtt311-port", type=click.IntRange(1, 65535),
              help="Also serve MQTT 3.1.1 clients, on this port.")
@click.option("--backlog-megabytes", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_BACKLOG_MEGABYTES, show_default=True,
              help="Messages kept per subscription for a subscriber that is away or slow; "
                   "older ones are dropped.")
def broker_command(port: int, data: Path | None, mqtt311_port: int | None,
                   backlog_megabytes: float) -> None:
    """Run the embedded MQTT 5 broker (iotcore/rumqttd) in the foreground until Ctrl+C or
    SIGTERM: for the demo and a single machine. It listens on 127.0.0.1 only, has no
    authentication and keeps nothing on disk; production uses Mosquitto or an MQTT 5
    cluster (docs/brokers.md)."""
    try:
        broker = EmbeddedBroker(port, data, mqtt311_port=mqtt311_port,
                                backlog_megabytes=backlog_megabytes)
        broker.start()
    except (ValueError, BrokerError) as error:
        raise click.ClickException(str(error)) from error
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"MQTT 5 broker (embedded, iotcore {iotcore_version()}) listening on "
                   f"{broker.url}")
        if broker.url_mqtt311:
            click.echo(f"MQTT 3.1.1 clients: {broker.url_mqtt311}")
        click.echo(f'Put this in the [broker] section of central and edge configs:\n'
                   f'  url = "{broker.url}"\n'
                   f"Only this machine can connect; queued messages are lost when it stops. "
                   f"Stop it with Ctrl+C.", nl=True)
        while not stop.wait(0.2):
            if not broker.running:
                raise click.ClickException("the embedded MQTT broker stopped unexpectedly"
                                           + broker.log_tail())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        broker.stop()
    click.echo("broker stopped")


# --- the child process ----------------------------------------------------------------------

def _serve(config_path: str) -> None:
    """Run rumqttd with `config_path` until terminated, or until our parent goes away (its end
    of our stdin closes)."""
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # rumqttd wraps its routing in error-level spans: one ERROR line per packet otherwise
    logging.getLogger("rumqttd").setLevel(logging.CRITICAL)
    # Ctrl+C in a terminal reaches the whole process group: the parent decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from iotcore import IotCoreBroker  # here: the parent never loads the broker

        broker = IotCoreBroker(config_path=config_path)
        # rumqttd fails only at a 3.1.1 listener whose port is taken: at an MQTT 5 one it
        # logs and runs on without listening, so every port is checked before it starts
        broker.check_ports()
        threading.Thread(target=_exit_when_parent_goes_away, daemon=True).start()
        broker.run_forever()
    except Exception as error:  # the parent shows this (the log's tail) in its BrokerError
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # not sys.exit: the stdin thread would block interpreter shutdown


def _exit_when_parent_goes_away() -> None:
    sys.stdin.buffer.read()  # returns at end of file: the parent closed the pipe or died
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1])
