"""The one JSON wire form of telemon records, version 1.

A message is either one record or a batch of records:

    {"type": "observation", "v": 1, "id": "…", "patient": "…", …}
    {"type": "batch", "v": 1, "items": [{"type": "observation", "v": 1, …}, …]}

Decimals travel as JSON numbers with the device's precision (2.0 stays 2.0), bytes as
base64, times as RFC 3339 with an offset. Every item in a batch is decoded on its own, so one
bad item is reported (with its path) without losing the good ones beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from telemon.models import (
    Alarm,
    ConsentEvent,
    Enrolment,
    Evaluation,
    LimitVersion,
    Observation,
    QuestionnaireResponse,
    Record,
)

VERSION = 1
AnyRecord = (Observation | QuestionnaireResponse | Alarm | Enrolment | LimitVersion
             | ConsentEvent | Evaluation)
RECORD_TYPES = ("batch", *(cls.__struct_config__.tag for cls in AnyRecord.__args__))


class WireError(ValueError):
    """A payload that is not a valid v1 message; `path` points at the offending part and
    `raw` holds its bytes when it is one item of a batch (so only that item is quarantined)."""

    def __init__(self, reason: str, path: str = "$", raw: bytes = b"") -> None:
        super().__init__(f"{reason} - at `{path}`" if path != "$" else reason)
        self.reason = reason
        self.path = path
        self.raw = raw


@dataclass(frozen=True)
class Decoded:
    """What one message held: the records that decoded and an error for each that did not."""

    records: list[Record]
    errors: list[WireError]


class _Head(msgspec.Struct):
    type: str | None = None
    v: int | None = None


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    v: int
    items: list[msgspec.Raw]


class _GoodBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch whose items all decode: read in one pass."""

    type: Literal["batch"]
    v: Literal[VERSION]
    items: list[AnyRecord]


_encoder = msgspec.json.Encoder(decimal_format="number")
_head_decoder = msgspec.json.Decoder(_Head)
_batch_decoder = msgspec.json.Decoder(_Batch)
_record_decoder = msgspec.json.Decoder(AnyRecord)
_good_batch_decoder = msgspec.json.Decoder(_GoodBatch)


def encode(record: Record) -> bytes:
    """One record as a v1 JSON message."""
    return _encoder.encode(record)


def encode_batch(records: list[Record]) -> bytes:
    """Several records as one v1 batch message."""
    return _encoder.encode({"type": "batch", "v": VERSION, "items": records})


def decode(payload: bytes) -> Record:
    """Exactly one record, or WireError saying what is wrong and where."""
    decoded = decode_message(payload)
    if decoded.errors:
        raise decoded.errors[0]
    if len(decoded.records) != 1:
        raise WireError(f"expected one record, got a batch of {len(decoded.records)}")
    return decoded.records[0]


def decode_message(payload: bytes) -> Decoded:
    """All records of a message (one record or a batch); a WireError for each bad part."""
    try:  # the usual message, a batch of good records, in one pass instead of one per part
        return Decoded(_good_batch_decoder.decode(payload).items, [])
    except (msgspec.DecodeError, ValueError):
        pass  # anything else is read part by part, to say exactly what is wrong where
    try:
        head = _head_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Decoded([], [_error(exc)])
    if head.v != VERSION:
        reason = "missing wire version `v`" if head.v is None else (
            f"unsupported wire version {head.v} (this telemon speaks {VERSION})")
        return Decoded([], [WireError(reason, "$.v")])
    if head.type not in RECORD_TYPES:
        return Decoded([], [WireError(
            f"unknown record type {head.type!r} (known: {', '.join(RECORD_TYPES)})", "$.type")])
    if head.type != "batch":
        try:
            return Decoded([_record_decoder.decode(payload)], [])
        except (msgspec.DecodeError, ValueError) as exc:
            return Decoded([], [_error(exc)])
    try:
        batch = _batch_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Decoded([], [_error(exc)])
    records, errors = [], []
    for index, item in enumerate(batch.items):
        try:
            records.append(_record_decoder.decode(item))
        except (msgspec.DecodeError, ValueError) as exc:
            error = _error(exc, prefix=f"$.items[{index}]")
            error.raw = bytes(item)
            errors.append(error)
    return Decoded(records, errors)


def _error(exc: Exception, prefix: str = "$") -> WireError:
    """Turn msgspec's 'reason - at `$.x`' (or a model's own ValueError) into a WireError."""
    if isinstance(exc, UnicodeDecodeError):  # msgspec raises it, without a path, for a string
        # whose bytes are not UTF-8 (found by fuzz/run.py)
        return WireError(f"a string is not valid UTF-8 ({exc.reason})", prefix)
    text = str(exc)
    reason, sep, path = text.rpartition(" - at `")
    if not sep:
        return WireError(text, prefix)
    return WireError(reason, prefix + path.rstrip("`")[1:])
