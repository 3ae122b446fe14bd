"""A gateway's broker credential and what the broker needs to know about it.

`telemon gateway provision GATEWAY` (telemon.admin) makes one credential per gateway - a
random password, or a client certificate signed by the organisation's gateway CA - and
prints the lines for the broker: a Mosquitto password-file line, the Mosquitto ACL lines
that confine the gateway to its own topics, and the same rules for EMQX. docs/provisioning.md
walks through it. Secrets are written owner-only and never logged or audited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from telemon import mqtt
from telemon.files import write_atomically

PASSWORD_BYTES = 32  # 256 random bits: no dictionary or brute force reaches it
# Mosquitto 2.0's password hash "$7$" (mosquitto_passwd -H sha512-pbkdf2, its default):
# PBKDF2-HMAC-SHA512 with a 12-byte salt and 101 iterations, as mosquitto_passwd 2.0.11 writes
# (tests/test_transport_security.py checks a line against the real tool and broker). The
# broker redoes the hash at every CONNECT; a random 256-bit password needs no slow hash.
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
CERTIFICATE_DAYS = 825  # a client certificate's life; re-provision before it runs out


class ProvisionError(Exception):
    """Provisioning cannot be done as asked (a CA that cannot be read, no cryptography)."""


@dataclass(frozen=True)
class GatewayTopics:
    """What a gateway may use on the broker, and nothing else."""

    obs: str  # publish: its readings
    status: str  # publish: its retained status and last will
    cmd: str  # subscribe: commands to this gateway


def gateway_topics(organisation: str, gateway: str) -> GatewayTopics:
    """A gateway's topics (ValueError for an id not usable in a topic)."""
    obs = mqtt.obs_topic(organisation, gateway)
    # the command topic is reserved in the ACL now, so the rules need no change once the
    # central sends commands: telemon/v1/<org>/<gateway>/cmd
    return GatewayTopics(obs, mqtt.status_topic(organisation, gateway),
                         obs.rpartition("/")[0] + "/cmd")


def new_password() -> str:
    """A strong random password (URL-safe text: no quoting needed in files or shells)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_password_line(user: str, password: str, *, salt: bytes | None = None,
                            iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """The password-file line `user:$7$<iterations>$<salt>$<hash>` (standard base64) that
    Mosquitto 2.0's `mosquitto_passwd` writes for this password."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{user}:$7${iterations}${encoded[0]}${encoded[1]}"


def mosquitto_acl(topics: GatewayTopics, user: str) -> str:
    """Mosquitto ACL-file lines: the user writes its readings and status, reads its commands
    (Mosquitto denies whatever no line allows)."""
    return "\n".join([f"user {user}", f"topic write {topics.obs}",
                      f"topic write {topics.status}", f"topic read {topics.cmd}"]) + "\n"


def emqx_rules(topics: GatewayTopics, user: str) -> list[dict[str, Any]]:
    """The same rules for EMQX 5's built-in-database authorizer: the body of
    `POST /api/v5/authorization/sources/built_in_database/username` (EMQX 5.0 documentation,
    https://docs.emqx.com/en/emqx/v5.0/access-control/authz/mnesia.html). EMQX must deny what
    no rule allows (`authorization.no_match = deny`)."""
    rules = [{"action": "publish", "permission": "allow", "topic": topics.obs},
             {"action": "publish", "permission": "allow", "topic": topics.status},
             {"action": "subscribe", "permission": "allow", "topic": topics.cmd}]
    return [{"username": user, "rules": rules}]


def emqx_json(topics: GatewayTopics, user: str) -> str:
    return json.dumps(emqx_rules(topics, user), indent=2)


def write_secret(path: Path, text: str) -> None:
    """Write a secret to `path`, readable by its owner only (replacing an older one)."""
    try:
        write_atomically(path, text.encode() + b"\n")
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror or exc}") from None


# --- client certificates ------------------------------------------------------------------

@dataclass(frozen=True)
class ClientCertificate:
    certificate: Path
    key: Path
    serial: str  # hex, for revoking it
    sha256: str  # the certificate's fingerprint (hex)
    expires: datetime


def issue_client_certificate(gateway: str, *, ca_cert: Path, ca_key: Path,
                             folder: Path) -> ClientCertificate:
    """A new key and a client certificate with common name `gateway`, signed by the
    organisation's gateway CA, written owner-only to folder/<gateway>.pem and .key. The broker
    takes the common name as the user name (Mosquitto: `use_identity_as_username true`)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ProvisionError("--cert needs the Python package cryptography (pip install "
                             "'telemon[certificates]'); or provision a password") from None
    try:
        issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except OSError as exc:
        raise ProvisionError(f"cannot read the CA: {exc}") from None
    except (ValueError, TypeError) as exc:  # not PEM, or an encrypted key
        raise ProvisionError(f"the CA certificate or key cannot be used: {exc}") from None
    if signer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) != issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ProvisionError(f"{ca_key} is not the key of the CA certificate {ca_cert}")

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a gateway clock slightly behind
        .not_valid_after(now + timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(signer, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = folder / f"{gateway}.pem", folder / f"{gateway}.key"
    write_secret(paths[1], key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode().rstrip("\n"))
    write_secret(paths[0], certificate.public_bytes(serialization.Encoding.PEM)
                 .decode().rstrip("\n"))
    return ClientCertificate(paths[0], paths[1], format(certificate.serial_number, "x"),
                             certificate.fingerprint(hashes.SHA256()).hex(),
                             certificate.not_valid_after_utc)
