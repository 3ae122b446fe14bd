"""MQTT for the edge and the central: topics, message framing, a paho-mqtt client factory
and reconnect backoff.

Topics carry pseudonymous ids only (never a CPR number or a name)::

    telemon/v1/<org>/<gateway>/obs       QoS 1: batches of records (telemon.wire)
    telemon/v1/<org>/<gateway>/status    retained: {"v": 1, "state": "online" | "offline" |
                                         "outbox-full", "outbox": <depth>, ...}; the last
                                         will is the retained "offline"
    telemon/v1/<org>/alarms              QoS 1
    $share/central-<org>/telemon/v1/<org>/+/obs    the central's shared subscription

Sessions: MQTT 5 with clean_start = False and a session expiry (SESSION_EXPIRY), so the broker
keeps a client's QoS 1 state and subscriptions across reconnects (MQTT 3.1.1:
clean_session = False). TLS (mqtts://) verifies the broker's certificate and host name
against the config's `ca_file`, else the system's CAs; a gateway may log in with a client
certificate (`client_cert`, `client_key`; docs/provisioning.md) or with the config's username
and password reference (`SecretRef.resolve()`).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemon import wire
from telemon.config import BrokerConfig

logger = logging.getLogger(__name__)

ROOT = f"telemon/v{wire.VERSION}"
SESSION_EXPIRY = 7 * 24 * 3600
"""Seconds the broker keeps a disconnected client's session (subscriptions, queued QoS 1)."""
KEEPALIVE = 30
MQTTv5 = MQTTProtocolVersion.MQTTv5
MQTTv311 = MQTTProtocolVersion.MQTTv311

_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# --- topics -------------------------------------------------------------------------------

def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a pseudonymous id usable in a topic "
                         "(1 to 64 letters, digits and . _ : -)")
    return value


def obs_topic(org: str, gateway: str) -> str:
    """Where a gateway publishes its readings."""
    return f"{ROOT}/{_segment(org, 'organisation')}/{_segment(gateway, 'gateway')}/obs"


def status_topic(org: str, gateway: str) -> str:
    """A gateway's retained status (and last will)."""
    return f"{ROOT}/{_segment(org, 'organisation')}/{_segment(gateway, 'gateway')}/status"


def alarms_topic(org: str) -> str:
    """Where an organisation's central publishes alarms."""
    return f"{ROOT}/{_segment(org, 'organisation')}/alarms"


def central_subscription(org: str) -> str:
    """The central's shared subscription to every gateway's readings of its organisation,
    so ingest workers can be added (the broker splits messages among them)."""
    org = _segment(org, "organisation")
    return f"$share/central-{org}/{ROOT}/{org}/+/obs"


def status_subscription(org: str) -> str:
    """Every gateway status of an organisation."""
    return f"{ROOT}/{_segment(org, 'organisation')}/+/status"


@dataclass(frozen=True)
class Topic:
    org: str
    gateway: str | None
    kind: str  # "obs", "status" or "alarms"


def parse_topic(topic: str) -> Topic | None:
    """The parts of a telemon topic; None for anything else."""
    parts = topic.split("/")
    if parts[:2] != ROOT.split("/") or not all(_ID.fullmatch(p) for p in parts[2:]):
        return None
    if len(parts) == 5 and parts[4] in ("obs", "status"):
        return Topic(parts[2], parts[3], parts[4])
    if len(parts) == 4 and parts[3] == "alarms":
        return Topic(parts[2], None, "alarms")
    return None


# --- payloads -----------------------------------------------------------------------------

_BATCH_HEAD = b'{"type":"batch","v":%d,"items":[' % wire.VERSION


def batch_message(items: Sequence[bytes]) -> bytes:
    """A v1 batch message of records already encoded with `wire.encode` (the outbox keeps
    them encoded): the same bytes `wire.encode_batch` gives, without decoding them again."""
    return _BATCH_HEAD + b",".join(items) + b"]}"


def status_payload(state: str, gateway: str, **fields: Any) -> bytes:
    """A gateway status message: {"v": 1, "state": ..., "gateway": ..., "at": ..., ...}."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps({"v": wire.VERSION, "state": state, "gateway": gateway, "at": at,
                       **fields}, separators=(",", ":")).encode()


# --- backoff ------------------------------------------------------------------------------

# --- clients ------------------------------------------------------------------------------

def make_client(broker: BrokerConfig, client_id: str, *,
                protocol: MQTTProtocolVersion = MQTTv5,
                will: tuple[str, bytes] | None = None, manual_ack: bool = False) -> paho.Client:
    """A paho-mqtt 2 client for `broker`: callback API 2, persistent session, credentials
    and TLS from the config, and an optional retained QoS 1 last will (topic, payload).
    `manual_ack`: received QoS 1 messages are acknowledged by `client.ack(mid, qos)` only.
    Connect it with `client.connect(**connect_arguments(broker, protocol))`."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=_segment(client_id, "client id"),
                         protocol=protocol,
                         clean_session=None if protocol == MQTTv5 else False,
                         manual_ack=manual_ack)
    if broker.username is not None:
        password = broker.password.resolve() if broker.password is not None else None
        client.username_pw_set(broker.username, password)
    if broker.tls:  # certificate and host name checked; ca_file None: the system's CAs
        try:
            # keyfile_password "": an encrypted key fails here instead of OpenSSL prompting
            # on the terminal of an unattended service
            client.tls_set(ca_certs=broker.ca_file, certfile=broker.client_cert,
                           keyfile=broker.client_key, keyfile_password="")
        except OSError as exc:  # ssl.SSLError too: a file missing, unreadable or not PEM
            files = ", ".join(f"{key} {getattr(broker, key)}" for key in
                              ("ca_file", "client_cert", "client_key") if getattr(broker, key))
            raise OSError(f"broker TLS files cannot be used ({files}; PEM files, the key not "
                          f"encrypted): {exc}") from exc
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect_arguments(broker: BrokerConfig, protocol: MQTTProtocolVersion = MQTTv5,
                      session_expiry: int = SESSION_EXPIRY) -> dict[str, Any]:
    """Keyword arguments for `Client.connect`: keep the session (MQTT 5 clean_start = False
    with a session expiry; 3.1.1 sets clean_session = False on the client instead)."""
    arguments: dict[str, Any] = {"host": broker.host, "port": broker.port,
                                 "keepalive": KEEPALIVE}
    if protocol == MQTTv5:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry
        arguments |= {"clean_start": False, "properties": properties}
    return arguments


def open_connection(client: paho.Client, broker: BrokerConfig, protocol: MQTTProtocolVersion,
                    *, first: bool) -> bool:
    """Connect `client` (the first time) or reconnect it (paho then resends what is still
    unacknowledged); the CONNACK comes through the loop. False, with the reason logged, when
    the broker cannot be reached or TLS fails."""
    try:
        if first:
            client.connect(**connect_arguments(broker, protocol))
        else:
            client.reconnect()
        return True
    except ssl.SSLError as exc:  # a configuration problem, not an outage: say so
        logger.error("TLS with broker %s:%d failed (the broker's certificate must be signed "
                     "by %s): %s", broker.host, broker.port,
                     f"a CA in {broker.ca_file}" if broker.ca_file else "a CA the system trusts",
                     exc)
    except OSError as exc:
        logger.info("broker %s:%d unreachable: %s", broker.host, broker.port, exc)
    return False


def protocol_refused(reason_code: Any) -> bool:
    """The broker refused the protocol version (it speaks MQTT 3.1.1 only): fall back."""
    value = getattr(reason_code, "value", reason_code)
    return value in (0x84, 1)  # v5 "Unsupported protocol version"; 3.1.1 CONNACK code 1
