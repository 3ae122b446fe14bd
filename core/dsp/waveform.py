"""Waveforms: QRS and pulse detection, RR intervals and heart rate, AF-screening features,
signal quality and an alarm gate for ECG and PPG.

Conventions (checked here once, with an error naming the problem):

* `x`: a 1-D sequence of numbers, made float64. NaN marks missing samples (a lead off, an
  ADC "no data" code): the detectors hold the last valid sample across them. +/-inf is
  rejected.
* `fs`: samples per second. QRS detection is validated from 125 to 1000 Hz (MIT-BIH record
  100 at 125, 360 and 1000 Hz in the suite); pulse detection from 25 to 1000 Hz.
* Peaks are int64 sample indices into `x`, increasing. Rates are beats per minute (/min).

Detection works on the signal quantised to ~1/1024 of its robust amplitude (the 99th
percentile of |x - median|), so any unit or gain works (mV, µV, ADC counts), and
the compiled kernels (telemon.cext._waveform) and their NumPy reference
(telemon.cext.waveform_reference, chosen with TELEMON_PUREPYTHON=1) agree sample for sample.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from telemon.dsp._select import kernels

_k = kernels("waveform")

__all__ = [
    "ALARMS",
    "ECG_FS",
    "GOOD_QUALITY",
    "PPG_FS",
    "AlarmAssessment",
    "RRFeatures",
    "af_features",
    "as_waveform",
    "assess_alarm",
    "detect_pulses",
    "detect_qrs",
    "heart_rate",
    "rr_intervals",
    "signal_quality",
]

ECG_FS = (125.0, 1000.0)
"""Sampling rates (Hz) QRS detection accepts."""

PPG_FS = (25.0, 1000.0)
"""Sampling rates (Hz) pulse detection accepts."""

GOOD_QUALITY = {"ecg": 0.66, "ppg": 0.86}
"""Least SQI of a good window: the template-correlation thresholds of Orphanidou et al. 2015
(IEEE J Biomed Health Inform 19:832), ECG 0.66, PPG 0.86."""

ALARMS = {
    "asystole": "no QRS for at least 4 s",
    "bradycardia": "heart rate below 40 /min for 5 consecutive beats",
    "tachycardia": "heart rate above 140 /min for 17 consecutive beats",
    "ventricular_tachycardia": "5 or more ventricular beats at a heart rate above 100 /min",
    "ventricular_fibrillation": "fibrillatory, flutter or oscillatory waveform for at least 4 s",
}
"""Alarm types `assess_alarm` knows, with their definitions (PhysioNet/CinC Challenge 2015,
Clifford et al. 2015, "Reducing false arrhythmia alarms in the ICU")."""


# --- validation ------------------------------------------------------------------------------


def as_waveform(x, name: str = "x") -> np.ndarray:
    """`x` as a contiguous 1-D float64 array (NaN = missing sample), or ValueError saying why
    not."""
    try:
        arr = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be numbers, got {type(x).__name__} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got shape {arr.shape}")
    infinite = np.isinf(arr)
    if infinite.any():
        infinite = np.flatnonzero(infinite)
        raise ValueError(f"{name}: must be finite or NaN (missing), sample {infinite[0]} is "
                         f"{arr[infinite[0]]}")
    return arr


def _rate(fs, limits: tuple[float, float], what: str) -> float:
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not math.isfinite(fs):
        raise ValueError(f"fs: must be a finite number of samples per second, got {fs!r}")
    lo, hi = limits
    if not lo <= fs <= hi:
        raise ValueError(f"fs: {what} supports {lo:g} to {hi:g} Hz, got {fs:g}")
    return float(fs)


def _step(x: np.ndarray) -> float:
    """Quantisation step: the robust amplitude (99th percentile of |x - median|, by rank) /
    1024, estimated on at most ~16,384 evenly spaced samples, and on x/4 so that values near
    the float64 maximum cannot overflow."""
    sample = x[:: max(1, x.size // 8192)]
    finite = sample[~np.isnan(sample)] / 4.0
    if finite.size == 0:
        return 1.0
    deviation = np.abs(finite - np.partition(finite, finite.size // 2)[finite.size // 2])
    rank = int(0.99 * (deviation.size - 1))
    amplitude = float(np.partition(deviation, rank)[rank])
    if not amplitude > 0.0:
        amplitude = float(deviation.max())
    step = amplitude / 256.0
    return step if 0.0 < step < math.inf else 1.0


# --- detection -------------------------------------------------------------------------------


def detect_qrs(x, fs) -> np.ndarray:
    """R-peak sample indices (int64, increasing) of a raw single-lead ECG sampled at `fs` Hz
    (125 to 1000).

    A Pan & Tompkins (1985) detector scaled to the sampling rate: boxcar decimation to
    120-240 Hz, an integer band-pass (~5-11 Hz), derivative, square, 150 ms integration;
    adaptive signal/noise thresholds with T-wave rejection and search-back for missed beats;
    each beat is placed on the raw ECG's extreme (of the QRS's polarity) within 20 ms. The
    record is flushed with its last value, so a QRS at its very end is still found. Any
    unit (mV, ADC counts): the signal is normalised first.
    """
    arr = as_waveform(x)
    fs = _rate(fs, ECG_FS, "QRS detection")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    return _k.qrs_detect(arr, fs, _step(arr))


def detect_pulses(x, fs) -> np.ndarray:
    """Systolic peak sample indices (int64, increasing) of a photoplethysmogram (PPG, any
    unit, higher = more blood) sampled at `fs` Hz (25 to 1000).

    Elgendi et al. (2013, PLoS ONE 8:e76585) two event-related moving averages (111 ms and
    667 ms, offset 2 % of the mean energy) on an integer band-pass (~0.5-6 Hz); the peak is
    the band-passed maximum of each block, pulses closer than 300 ms keep the larger.
    """
    arr = as_waveform(x)
    fs = _rate(fs, PPG_FS, "pulse detection")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    return _k.pulse_detect(arr, fs, _step(arr))


def _peaks(peaks, name: str = "peaks") -> np.ndarray:
    try:
        arr = np.asarray(peaks)
    except (TypeError, ValueError) as exc:  # pragma: no cover - asarray rarely fails
        raise ValueError(f"{name}: must be sample indices ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: must be integer sample indices, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        bad = int(np.flatnonzero(np.diff(arr) <= 0)[0]) + 1
        raise ValueError(f"{name}: must be strictly increasing, index {bad} is {arr[bad]} after "
                         f"{arr[bad - 1]}")
    return arr


def rr_intervals(peaks, fs) -> np.ndarray:
    """Intervals between consecutive peaks, in seconds (float64, one fewer than peaks)."""
    arr = _peaks(peaks)
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not 0 < fs < math.inf:
        raise ValueError(f"fs: must be a positive number of samples per second, got {fs!r}")
    return np.diff(arr) / float(fs)


def heart_rate(peaks, fs) -> float:
    """Mean heart (or pulse) rate over the peaks, in beats per minute: 60 / mean interval.
    NaN with fewer than two peaks."""
    rr = rr_intervals(peaks, fs)
    return 60.0 / float(rr.mean()) if rr.size else math.nan


# --- AF screening ------------------------------------------------------------------------------


class RRFeatures(NamedTuple):
    """AF-screening features per window of RR intervals (Dash et al. 2009, Ann Biomed Eng
    37:1701; Tateno & Glass 2001). `start` is the index (into the rr given) of each window's
    first interval; `ectopic` the share of the window's span flagged as ectopic and left out."""

    start: np.ndarray
    cv: np.ndarray        # SD / mean (population SD)
    nrmssd: np.ndarray    # RMS of successive differences / mean
    tpr: np.ndarray       # turning points / (n - 2); ~2/3 for a random series
    shannon: np.ndarray   # entropy of a 16-bin histogram over [min, max], / log 16: 0..1
    ectopic: np.ndarray

    @property
    def af_suspect(self) -> np.ndarray:
        """Windows irregular by all three of Dash's criteria: nRMSSD >= 0.1, 0.54 <= TPR <=
        0.77, ShEn >= 0.7 (the thresholds of public reimplementations of Dash 2009:
        unverified against the paper)."""
        return (self.nrmssd >= 0.1) & (self.tpr >= 0.54) & (self.tpr <= 0.77) & (
            self.shannon >= 0.7)


def _ectopic(rr: np.ndarray) -> np.ndarray:
    """Intervals in a premature-then-compensatory pair: shorter than 85 % of the local
    median (the 9 intervals around) followed by one longer than 115 % of it. Sinus rhythm
    with ectopic beats is regular once the pairs are left out; AF is not."""
    flagged = np.zeros(rr.size, dtype=bool)
    if rr.size < 3:
        return flagged
    padded = np.pad(rr, 4, mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(padded, 9), axis=1)
    pair = (rr[:-1] < 0.85 * local[:-1]) & (rr[1:] > 1.15 * local[:-1])
    flagged[:-1] |= pair
    flagged[1:] |= pair
    return flagged


def af_features(rr, *, window: int = 128, step: int | None = None,
                ectopy: bool = True) -> RRFeatures:
    """AF-screening features over windows of `window` RR intervals (seconds, > 0), windows
    starting every `step` intervals (default: `window`, not overlapping).

    With `ectopy=True` (the gate on ectopy) premature/compensatory interval pairs are left
    out first, so isolated ectopic beats do not look like AF; `ectopic` reports the share
    flagged. A window needs `window` intervals after that; fewer give no window.
    """
    arr = as_waveform(rr, "rr")
    if np.isnan(arr).any() or (arr.size and arr.min() <= 0):
        raise ValueError("rr: intervals must be positive seconds, without NaN")
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 8:
        raise ValueError(f"window: must be an integer number of intervals >= 8, got {window!r}")
    step = window if step is None else step
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
        raise ValueError(f"step: must be a positive integer, got {step!r}")
    window, step = int(window), int(step)
    flagged = _ectopic(arr) if ectopy else np.zeros(arr.size, dtype=bool)
    kept = np.flatnonzero(~flagged)
    values = _k.rr_features(np.ascontiguousarray(arr[kept]), window, step)
    first = np.arange(values.shape[0], dtype=np.int64) * step
    start = kept[first] if first.size else np.zeros(0, dtype=np.int64)
    stop = kept[first + window - 1] + 1 if first.size else np.zeros(0, dtype=np.int64)
    counts = np.concatenate([[0], np.cumsum(flagged)])
    share = (counts[stop] - counts[start]) / np.maximum(stop - start, 1)
    return RRFeatures(start.astype(np.int64), values[:, 0].copy(), values[:, 1].copy(),
                      values[:, 2].copy(), values[:, 3].copy(), share.astype(np.float64))


# --- signal quality ---------------------------------------------------------------------------


def _windows(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive windows of `size` samples from the start; a last window shorter than half
    a window joins the one before; a signal shorter than a window is one window."""
    if n == 0:
        return []
    size = max(1, size)
    bounds = [*range(0, n, size), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < size / 2:
        del bounds[-2]
    return list(itertools.pairwise(bounds))


def _held(x: np.ndarray) -> np.ndarray:
    """NaN replaced by the last valid sample (the first valid one before it; 0 if none)."""
    nan = np.isnan(x)
    if not nan.any():
        return x
    valid = np.flatnonzero(~nan)
    if valid.size == 0:
        return np.zeros_like(x)
    idx = np.where(nan, 0, np.arange(x.size))
    np.maximum.accumulate(idx, out=idx)
    idx[: valid[0]] = valid[0]
    return x[idx]


def _beat_correlation(x: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Pearson correlation of each beat (+-half the median interval around its peak) with the
    median beat (Orphanidou et al. 2015; the template from at most 2048 evenly spaced beats,
    so that long recordings stay within memory); 0 for a flat beat."""
    if peaks.size < 3:
        return np.zeros(peaks.size)
    half = max(1, int(np.median(np.diff(peaks))) // 2)
    padded = np.pad(_held(x), half, mode="edge")
    offsets = np.arange(2 * half + 1)

    def beats(at: np.ndarray) -> np.ndarray:
        b = padded[at[:, None] + offsets[None, :]]
        return b - b.mean(axis=1, keepdims=True)

    template = np.median(beats(peaks[:: max(1, peaks.size // 2048)]), axis=0)
    template = template - template.mean()
    energy = float((template * template).sum())
    out = np.zeros(peaks.size)
    for lo in range(0, peaks.size, 4096):
        b = beats(peaks[lo: lo + 4096])
        norms = np.sqrt((b * b).sum(axis=1) * energy)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo: lo + 4096] = np.where(norms > 0, (b @ template) / norms, 0.0)
    return out


def _quality(x: np.ndarray, fs: float, window: float, peaks: np.ndarray):
    """Per window: (SQI, beats in the window)."""
    corr = np.clip(_beat_correlation(x, peaks), 0.0, 1.0)
    out = []
    for lo, hi in _windows(x.size, round(window * fs)):
        inside = (peaks >= lo) & (peaks < hi)
        count = int(inside.sum())
        out.append((float(corr[inside].mean()) if count else 0.0, count))
    return out


def _kind(kind: str) -> str:
    if kind not in GOOD_QUALITY:
        raise ValueError(f"kind: must be one of {', '.join(GOOD_QUALITY)}, got {kind!r}")
    return kind


def _window_seconds(window) -> float:
    if isinstance(window, bool) or not isinstance(window, numbers.Real) or not (
            0 < window < math.inf):
        raise ValueError(f"window: must be a positive number of seconds, got {window!r}")
    return float(window)


def signal_quality(x, fs, kind: str = "ecg", *, window: float = 2.0) -> np.ndarray:
    """Signal-quality index per window of `window` seconds, in [0, 1] (float64).

    The beats are detected over the whole signal (QRS for kind="ecg", pulses for "ppg");
    each beat is correlated with the median beat (Orphanidou et al. 2015) and a window's SQI
    is the mean correlation of its beats (negative counted as 0). A window without a beat is
    0: flat lines and pauses cannot be assessed. Good quality: SQI >= GOOD_QUALITY[kind].
    Windows start at sample 0; a last window shorter than half a window joins the previous.
    """
    kind = _kind(kind)
    window = _window_seconds(window)
    arr = as_waveform(x)
    peaks = detect_qrs(arr, fs) if kind == "ecg" else detect_pulses(arr, fs)
    return np.array([q for q, _ in _quality(arr, float(fs), window, peaks)],
                    dtype=np.float64)


# --- alarm gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmAssessment:
    """What the signals say about an alarm.

    verdict: "credible" (keep the alarm), "contradicted" (good-quality beats of one channel
    rule the alarm out), or "poor_quality" (the ECG is mostly artefact and no channel
    supports the alarm); see `assess_alarm`. `credible` is verdict == "credible"; `reason`
    says why, with numbers. Qualities are SQI per window (for the ECG the best lead of each
    window); rates in /min from the beats in good windows (NaN with fewer than 4 intervals).
    """

    alarm: str
    verdict: str
    reason: str
    ecg_quality: np.ndarray
    ppg_quality: np.ndarray
    heart_rate: float
    pulse_rate: float

    @property
    def credible(self) -> bool:
        return self.verdict == "credible"


@dataclass
class _Channel:
    name: str
    kind: str
    duration: float
    edges: np.ndarray             # window bounds (s), one more than windows
    quality: np.ndarray           # SQI per window
    beats: np.ndarray             # beats per window
    good: np.ndarray              # bool per window
    evidence: np.ndarray          # beat times (s) inside good windows
    times: np.ndarray             # all beat times (s)


def _channel(name: str, x: np.ndarray, fs: float, kind: str, window: float) -> _Channel:
    peaks = detect_qrs(x, fs) if kind == "ecg" else detect_pulses(x, fs)
    rows = _quality(x, fs, window, peaks)
    quality = np.array([q for q, _ in rows])
    beats = np.array([c for _, c in rows])
    good = quality >= GOOD_QUALITY[kind]
    bounds = _windows(x.size, round(window * fs))
    keep = np.zeros(peaks.size, dtype=bool)
    for (lo, hi), ok in zip(bounds, good, strict=True):
        if ok:
            keep |= (peaks >= lo) & (peaks < hi)
    edges = np.array([lo for lo, _ in bounds] + [x.size]) / fs
    return _Channel(name, kind, x.size / fs, edges, quality, beats, good, peaks[keep] / fs,
                    peaks / fs)


def _fuse(leads: list[_Channel]) -> _Channel:
    """Per window the best lead: its SQI, its beats (evidence when good)."""
    duration, edges = leads[0].duration, leads[0].edges
    best = np.argmax(np.stack([c.quality for c in leads]), axis=0)
    quality = np.array([leads[b].quality[i] for i, b in enumerate(best)])
    beats = np.array([leads[b].beats[i] for i, b in enumerate(best)])
    good = np.array([leads[b].good[i] for i, b in enumerate(best)])
    evidence = []
    for i, b in enumerate(best):
        if good[i]:
            t = leads[b].evidence
            evidence.append(t[(t >= edges[i]) & (t < edges[i + 1])])
    ev = np.sort(np.concatenate(evidence)) if evidence else np.zeros(0)
    if ev.size > 1:  # the same beat seen in two leads across a window edge
        ev = ev[np.concatenate([[True], np.diff(ev) > 0.15])]
    name = "ECG" if len(leads) == 1 else "ECG (" + ", ".join(c.name for c in leads) + ")"
    return _Channel(name, "ecg", duration, edges, quality, beats, good, ev,
                    np.sort(np.concatenate([c.times for c in leads])))


def _gaps(times: np.ndarray, duration: float) -> np.ndarray:
    """Intervals between beats, with the stretch before the first and after the last."""
    return np.diff(np.concatenate([[0.0], times, [duration]]))


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for flag in mask.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def _rules_out(alarm: str, channel: _Channel) -> str | None:
    """Why a channel's good-quality beats rule the alarm out, or None.

    Pauses (asystole, fibrillation: >= 4 s) are ruled out when the good-quality beats leave
    no 4 s stretch without a beat (a window of poor quality counts as a stretch without
    one). Rate runs (5 or 17 beats) can hide in one poor window, so those need every window
    of good quality.
    """
    times, duration = channel.evidence, channel.duration
    longest = float(_gaps(times, duration).max())
    if alarm == "asystole" and longest < 4.0:
        return f"beats with no 4 s pause (longest {longest:.2f} s)"
    if alarm == "ventricular_fibrillation" and longest < 4.0:
        return f"organised beats with no 4 s gap (longest {longest:.2f} s)"
    if not (channel.good.size and channel.good.all()):
        return None
    gaps, inner = _gaps(times, duration), np.diff(times)
    if alarm == "bradycardia" and _longest_run(gaps > 1.5) < 4:
        return "no 5 consecutive beats below 40 /min"
    if alarm == "tachycardia" and _longest_run(inner < 60 / 140) < 16:
        return "no 17 consecutive beats above 140 /min"
    if alarm == "ventricular_tachycardia" and _longest_run(inner < 0.6) < 4:
        return "no 5 consecutive beats above 100 /min"
    return None


def _supports(alarm: str, channel: _Channel) -> str | None:
    """Why a channel supports the alarm despite a poor ECG, or None."""
    if channel.kind == "ppg" and alarm in (
            "asystole", "ventricular_tachycardia", "ventricular_fibrillation"):
        longest = float(_gaps(channel.times, channel.duration).max())
        if longest >= 4.0:
            return f"no pulse for {longest:.1f} s"
    if channel.good.any():
        runs = {"ventricular_tachycardia": (np.diff(channel.evidence) < 0.6, 4),
                "tachycardia": (np.diff(channel.evidence) < 60 / 140, 16),
                "bradycardia": (np.diff(channel.evidence) > 1.5, 4)}
        if alarm in runs:
            mask, length = runs[alarm]
            if _longest_run(mask) >= length:
                return f"good-quality stretch meets the {alarm.replace('_', ' ')} rate"
    return None


def _median_rate(times: np.ndarray) -> float:
    """60 / median interval between good-quality beats (intervals over 3 s, which span a
    poor window, left out); NaN with fewer than 4 such intervals."""
    rr = np.diff(times)
    rr = rr[rr < 3.0]
    return 60.0 / float(np.median(rr)) if rr.size >= 4 else math.nan


def assess_alarm(alarm: str, fs, ecg, ppg=None, *, ppg_fs=None,
                 window: float = 2.0) -> AlarmAssessment:
    """Is an arrhythmia alarm credible, given the ECG and PPG of the seconds before it?

    `alarm`: one of ALARMS. `ecg`: one lead (1-D), or several leads (2-D samples x leads,
    or a list of 1-D arrays) at `fs` Hz; `ppg` optional, at `ppg_fs` (default `fs`), over the
    same stretch (~16 s before the alarm is usual). Each channel is cut into windows of
    `window` seconds and scored with `signal_quality`; per window the best ECG lead counts.

    The alarm is kept ("credible") unless
      * "contradicted": the good-quality beats of one channel (fused ECG or PPG) rule the
        alarm out by its own definition (ALARMS): for asystole and fibrillation, beats with
        no 4 s stretch free of them (poor windows count as free); for the rate alarms,
        every window good and no qualifying run of beats; or
      * "poor_quality" (not for ventricular fibrillation, which itself looks like noise):
        at least half of the ECG windows hold beats that do not match the median beat
        (artefact), and no channel supports the alarm (a PPG without a pulse for >= 4 s,
        or good-quality beats meeting the alarm's rate).
    A flat or silent channel never suppresses an alarm: a window without beats is not
    "poor", so a flat ECG with a flat PPG (true asystole) stays credible.
    """
    if alarm not in ALARMS:
        raise ValueError(f"alarm: must be one of {', '.join(ALARMS)}, got {alarm!r}")
    window = _window_seconds(window)
    fs = _rate(fs, ECG_FS, "QRS detection")
    leads = _leads(ecg)
    channels_ecg = [_channel(f"lead {i + 1}", lead, fs, "ecg", window)
                    for i, lead in enumerate(leads)]
    ecg_ch = _fuse(channels_ecg)
    ppg_ch = None
    if ppg is not None:
        p = as_waveform(ppg, "ppg")
        pfs = _rate(fs if ppg_fs is None else ppg_fs, PPG_FS, "pulse detection")
        if p.size:
            ppg_ch = _channel("PPG", p, pfs, "ppg", window)
    ppg_quality = ppg_ch.quality if ppg_ch else np.zeros(0)
    hr = _median_rate(ecg_ch.evidence)
    pr = _median_rate(ppg_ch.evidence) if ppg_ch else math.nan

    def result(verdict: str, reason: str) -> AlarmAssessment:
        return AlarmAssessment(alarm, verdict, reason, ecg_ch.quality, ppg_quality, hr, pr)

    for channel in [ecg_ch, *([ppg_ch] if ppg_ch else [])]:
        why = _rules_out(alarm, channel)
        if why:
            return result("contradicted", f"{channel.name} good in {int(channel.good.sum())} "
                          f"of {channel.good.size} windows of {window:g} s: {why}")
    poor = (ecg_ch.beats > 0) & ~ecg_ch.good
    if alarm != "ventricular_fibrillation" and poor.sum() * 2 >= poor.size > 0:
        for channel in [ecg_ch, *([ppg_ch] if ppg_ch else [])]:
            why = _supports(alarm, channel)
            if why:
                return result("credible", f"ECG mostly artefact, but {channel.name}: {why}")
        return result("poor_quality", f"ECG artefact in {int(poor.sum())} of {poor.size} "
                      f"windows of {window:g} s" + (
                          "" if ppg_ch is None else
                          f"; PPG good in {int(ppg_ch.good.sum())} of {ppg_ch.good.size}"))
    return result("credible", "no good-quality channel rules it out")


def _leads(ecg) -> list[np.ndarray]:
    if isinstance(ecg, (list, tuple)):
        leads = [as_waveform(lead, f"ecg[{i}]") for i, lead in enumerate(ecg)]
    else:
        try:
            arr = np.asarray(ecg, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ecg: must be numbers ({exc})") from None
        if arr.ndim == 2:
            leads = [as_waveform(arr[:, i], f"ecg[:, {i}]") for i in range(arr.shape[1])]
        else:
            leads = [as_waveform(arr, "ecg")]
    if not leads or any(lead.size == 0 for lead in leads):
        raise ValueError("ecg: needs at least one lead with samples")
    if len({lead.size for lead in leads}) > 1:
        raise ValueError(f"ecg: leads must have the same length, got {[ld.size for ld in leads]}")
    return leads
