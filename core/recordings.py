"""Reading WFDB recordings (PhysioNet) and scoring beat detection against their annotations.

Our own reader, so telemon needs no `wfdb` package: the header (`.hea`), signal files in
formats 212, 16 and 80 (including the `.mat` variant, which is format 16 after a byte
offset: `16+24`), and MIT-format annotation files (`.atr`). Format descriptions: the WFDB
Applications Guide, "header(5)", "signal(5)" and "annot(5)" (PhysioNet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MIT annotation codes (annot(5)) and the beat labels scored by convention (shared/data/README).
ANNOTATION_SYMBOLS = {
    1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E", 11: "j",
    12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*", 21: "D", 22: '"', 23: "=",
    24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u", 30: "?", 31: "!", 32: "[", 33: "]",
    34: "e", 35: "n", 36: "@", 37: "x", 38: "f", 39: "(", 40: ")", 41: "r",
}
BEAT_SYMBOLS = frozenset("NLRAaJSVFejE/fQ")
_SKIP, _NUM, _SUB, _CHN, _AUX = 59, 60, 61, 62, 63
_INVALID = {212: -2048, 16: -32768, 80: -128}  # the sample value WFDB reserves for "no data"


class RecordError(ValueError):
    """A recording that cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class Recording:
    name: str
    fs: float
    signals: np.ndarray  # (samples, channels), physical units, NaN where the ADC had no data
    channels: tuple[str, ...]
    units: tuple[str, ...]
    comments: tuple[str, ...]


@dataclass(frozen=True)
class Annotations:
    samples: np.ndarray  # int64 sample indices
    symbols: tuple[str, ...]

    def beats(self) -> np.ndarray:
        """Sample indices of the beat annotations (non-beat labels such as + and ~ left out)."""
        keep = np.fromiter((s in BEAT_SYMBOLS for s in self.symbols), bool, len(self.symbols))
        return self.samples[keep]


@dataclass(frozen=True)
class _Signal:
    file: str
    fmt: int
    offset: int
    gain: float
    baseline: int
    units: str
    description: str


_FORMAT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([-+\d.eE]+)(?:\((-?\d+)\))?(?:/(\S+))?$")


def read_record(path: str | Path) -> Recording:
    """The recording whose header is `path` + ".hea" (path given without extension)."""
    header = Path(f"{path}.hea")
    try:
        lines = header.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise RecordError(f"{header}: cannot be read: {exc.strerror or exc}") from None
    comments = tuple(ln.lstrip("#").strip() for ln in lines if ln.startswith("#"))
    fields = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not fields:
        raise RecordError(f"{header}: no record line")
    record = fields[0]
    try:
        name, nsig = record[0], int(record[1])
        fs = float(record[2].split("/")[0]) if len(record) > 2 else 250.0
        nsamples = int(record[3]) if len(record) > 3 else None
    except (IndexError, ValueError):
        raise RecordError(f"{header}: bad record line {' '.join(record)!r}") from None
    if nsig < 1 or len(fields) - 1 < nsig:
        raise RecordError(f"{header}: announces {nsig} signals, describes {len(fields) - 1}")
    signals = [_parse_signal(header, f) for f in fields[1:nsig + 1]]
    columns: list[np.ndarray] = [np.empty(0)] * nsig
    for file in dict.fromkeys(s.file for s in signals):
        index = [i for i, s in enumerate(signals) if s.file == file]
        digital = _read_samples(header.parent / file, [signals[i] for i in index], nsamples)
        for column, i in enumerate(index):
            columns[i] = digital[:, column]
    length = min(len(c) for c in columns)
    physical = np.empty((length, nsig))
    for i, (s, digital) in enumerate(zip(signals, columns, strict=True)):
        values = (digital[:length].astype(np.float64) - s.baseline) / s.gain
        values[digital[:length] == _INVALID[s.fmt]] = np.nan
        physical[:, i] = values
    return Recording(name, fs, physical, tuple(s.description for s in signals),
                     tuple(s.units for s in signals), comments)


def _parse_signal(header: Path, fields: list[str]) -> _Signal:
    match = _FORMAT.match(fields[1]) if len(fields) > 1 else None
    if match is None:
        raise RecordError(f"{header}: bad signal line {' '.join(fields)!r}")
    fmt, per_frame, skew, offset = match.groups()
    if int(fmt) not in _INVALID:
        raise RecordError(f"{header}: signal format {fmt} is not supported (212, 16, 80 are)")
    if (per_frame and int(per_frame) != 1) or (skew and int(skew) != 0):
        raise RecordError(f"{header}: multi-frequency and skewed signals are not supported")
    gain, baseline, units = 200.0, None, "mV"
    if len(fields) > 2:
        g = _GAIN.match(fields[2])
        if g is None:
            raise RecordError(f"{header}: bad gain {fields[2]!r}")
        gain = float(g[1]) or 200.0  # WFDB: a gain of 0 means the default, 200
        baseline = None if g[2] is None else int(g[2])
        units = g[3] or units
    adc_zero = int(fields[4]) if len(fields) > 4 else 0
    return _Signal(file=fields[0], fmt=int(fmt), offset=int(offset or 0), gain=gain,
                   baseline=adc_zero if baseline is None else baseline, units=units,
                   description=" ".join(fields[8:]) if len(fields) > 8 else "")


def _read_samples(file: Path, signals: list[_Signal], nsamples: int | None) -> np.ndarray:
    """The digital samples of one signal file, shape (samples, signals in that file)."""
    fmt, offset, nsig = signals[0].fmt, signals[0].offset, len(signals)
    if any(s.fmt != fmt or s.offset != offset for s in signals):
        raise RecordError(f"{file}: signals in one file must share format and offset")
    try:
        raw = np.fromfile(file, dtype=np.uint8, offset=offset)
    except OSError as exc:
        raise RecordError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    if fmt == 212:  # two 12-bit samples in three bytes
        triples = raw[: len(raw) // 3 * 3].reshape(-1, 3).astype(np.int16)
        flat = np.empty(len(triples) * 2, dtype=np.int16)
        flat[0::2] = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
        flat[1::2] = triples[:, 2] | ((triples[:, 1] & 0xF0) << 4)
        flat[flat > 2047] -= 4096
    elif fmt == 16:
        flat = raw[: len(raw) // 2 * 2].view("<i2")
    else:  # 80: eight bits with an offset of 128
        flat = raw.astype(np.int16) - 128
    frames = len(flat) // nsig
    if nsamples is not None:
        if frames < nsamples:
            raise RecordError(f"{file}: holds {frames} samples per signal, header says "
                              f"{nsamples}")
        frames = nsamples
    return flat[: frames * nsig].reshape(frames, nsig)


def read_annotations(path: str | Path, extension: str = "atr") -> Annotations:
    """The annotations in `path` + "." + extension (MIT format)."""
    file = Path(f"{path}.{extension}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise RecordError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    samples: list[int] = []
    symbols: list[str] = []
    time, pos = 0, 0
    while pos + 1 < len(data):
        word = data[pos] | data[pos + 1] << 8
        code, value = word >> 10, word & 0x3FF
        pos += 2
        if code == 0 and value == 0:
            break
        if code == _SKIP:  # a 32-bit interval follows, high half first
            high, low = (data[pos] | data[pos + 1] << 8), (data[pos + 2] | data[pos + 3] << 8)
            interval = high << 16 | low
            time += interval - (1 << 32) if interval & (1 << 31) else interval
            pos += 4
        elif code == _AUX:
            pos += value + (value & 1)
        elif code in (_NUM, _SUB, _CHN):
            continue
        else:
            time += value
            samples.append(time)
            symbols.append(ANNOTATION_SYMBOLS.get(code, "?"))
    return Annotations(np.asarray(samples, dtype=np.int64), tuple(symbols))


@dataclass(frozen=True)
class BeatScore:
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def sensitivity(self) -> float:
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else float("nan")

    @property
    def positive_predictivity(self) -> float:
        called = self.true_positives + self.false_positives
        return self.true_positives / called if called else float("nan")


def score_beats(detected, reference, fs: float, window: float = 0.150) -> BeatScore:
    """Match detections to reference beats one to one, each within `window` seconds
    (150 ms by convention); unmatched detections are false positives."""
    detected = np.sort(np.asarray(detected, dtype=np.int64))
    reference = np.sort(np.asarray(reference, dtype=np.int64))
    tolerance = window * fs
    i = j = tp = 0
    while i < len(detected) and j < len(reference):
        gap = detected[i] - reference[j]
        if abs(gap) <= tolerance:
            tp += 1
            i += 1
            j += 1
        elif gap < 0:
            i += 1
        else:
            j += 1
    return BeatScore(tp, len(detected) - tp, len(reference) - tp)
