"""telemon.dsp waveforms: the compiled kernels and their NumPy reference agree sample for
sample; QRS detection scored on MIT-BIH record 100 (at 360, 125 and 1000 Hz); pulse
detection, signal quality and the alarm gate on PhysioNet/CinC 2015 false alarms; AF
features; and the `telemon dsp qrs` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemon import dsp
from telemon.cext import waveform_reference as reference
from telemon.cli import build_cli
from telemon.dsp import _select, waveform
from telemon.recordings import read_annotations, read_record, score_beats

try:
    from telemon.cext import _waveform as compiled
except ImportError:  # a source tree without the built extension
    compiled = None

needs_compiled = pytest.mark.skipif(compiled is None, reason="compiled kernels not built")
PHYSIONET = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet"
needs_data = pytest.mark.skipif(
    not (PHYSIONET / "100.hea").exists(),
    reason=f"PhysioNet test records not found in {PHYSIONET} (see shared/data/README.md)")
IMPLEMENTATIONS = [pytest.param("compiled", marks=needs_compiled), "reference"]
relaxed = settings(deadline=None, max_examples=60,
                   suppress_health_check=[HealthCheck.too_slow])


def kernel(name: str):
    return compiled if name == "compiled" else reference


@pytest.fixture
def use(monkeypatch):
    """Route telemon.dsp's waveform functions to one implementation."""
    def choose(name: str):
        monkeypatch.setattr(waveform, "_k", kernel(name))
    return choose


def both(function: str, *args):
    """The compiled and the reference kernel's answers to the same call."""
    return getattr(compiled, function)(*args), getattr(reference, function)(*args)


def arr(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)


# --- implementation switch ----------------------------------------------------------------------


def test_the_waveform_kernels_follow_telemon_purepython():
    wanted = "reference" if os.environ.get("TELEMON_PUREPYTHON") == "1" else "compiled"
    if wanted == "compiled" and compiled is None:
        pytest.skip("compiled kernels not built")
    assert _select.CHOSEN["waveform"] == wanted
    assert waveform._k is kernel(wanted)


# --- synthetic signals ------------------------------------------------------------------------


def synthetic_ecg(fs: float, rr: np.ndarray, *, noise: float = 0.0, wander: float = 0.0,
                  scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PQRST-like waveform (mV * scale) with beats after the intervals `rr` (s); returns
    the signal and the R-peak sample indices."""
    rng = np.random.default_rng(seed)
    beats = 0.6 + np.cumsum(np.concatenate([[0.0], rr]))
    t = np.arange(int((beats[-1] + 0.8) * fs)) / fs
    x = np.zeros(t.size)
    for b in beats:
        for offset, width, height in ((-0.17, 0.025, 0.15), (-0.025, 0.008, -0.15),
                                      (0.0, 0.011, 1.2), (0.03, 0.01, -0.3),
                                      (0.26, 0.05, 0.35)):
            x += height * np.exp(-0.5 * ((t - b - offset) / width) ** 2)
    x += wander * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0.0, noise, t.size)
    return scale * x, np.round(beats * fs).astype(np.int64)


def synthetic_ppg(fs: float, rr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pulse wave (systolic peak, dicrotic notch and wave); returns it and its systolic
    peak sample indices."""
    beats = 0.5 + np.cumsum(np.concatenate([[0.0], rr]))
    t = np.arange(int((beats[-1] + 1.0) * fs)) / fs
    x = np.zeros(t.size)
    for b in beats:
        x += 1.0 * np.exp(-0.5 * ((t - b) / 0.08) ** 2)
        x += 0.4 * np.exp(-0.5 * ((t - b - 0.3) / 0.1) ** 2)
    return x, np.round(beats * fs).astype(np.int64)


# --- parity: edge cases ----------------------------------------------------------------------

EDGE_CASES = {
    "empty": [],
    "one sample": [0.5],
    "two samples": [0.0, 1.0],
    "all NaN": [math.nan] * 500,
    "flat": [0.3] * 3000,
    "flat then NaN": [0.3] * 1000 + [math.nan] * 500 + [0.3] * 1000,
    "step": [0.0] * 1500 + [1.0] * 1500,
    "huge": [1e300, -1e300] * 1500,
    "float64 extremes": [1.7e308, -1.7e308, 0.0] * 1000,
    "tiny": [5e-324, 0.0, -5e-324] * 1000,
}


def _edge_signals():
    ecg, _ = synthetic_ecg(360.0, np.full(8, 0.8))
    with_gaps = ecg.copy()
    with_gaps[:100] = math.nan
    with_gaps[1000:1400] = math.nan
    with_gaps[-50:] = math.nan
    spikes = ecg.copy()
    spikes[::997] = 1e6
    return {**{k: arr(v) for k, v in EDGE_CASES.items()}, "ECG with NaN gaps": with_gaps,
            "ECG with 1e6 spikes": spikes}


@needs_compiled
@pytest.mark.parametrize("fs", [125.0, 360.0, 1000.0])
@pytest.mark.parametrize("case", list(_edge_signals()))
def test_edge_cases_match_between_implementations(case, fs):
    x = _edge_signals()[case]
    step = waveform._step(x)
    for function in ("qrs_detect", "pulse_detect", "qrs_candidates"):
        got_compiled, got_reference = both(function, x, fs, step)
        assert got_compiled.dtype == got_reference.dtype == np.int64, function
        assert got_compiled.tolist() == got_reference.tolist(), function
    quantised_compiled, quantised_reference = both("quantize", x, step)
    assert quantised_compiled.tolist() == quantised_reference.tolist()
    peaks = dsp.detect_qrs(x, fs)
    assert peaks.dtype == np.int64
    assert np.all(np.diff(peaks) > 0) and np.all((peaks >= 0) & (peaks < max(x.size, 1)))
    if case.startswith(("flat", "all NaN", "empty", "one")):
        assert peaks.size == 0
        assert dsp.detect_pulses(x, fs).size == 0


def test_quantize_holds_the_last_valid_sample_over_nan():
    x = arr([math.nan, math.nan, 2.0, math.nan, -3.5, 1e9, -1e9, math.nan])
    expected = [2, 2, 2, 2, -4, reference.LIMIT, -reference.LIMIT, -reference.LIMIT]
    assert reference.quantize(x, 1.0).tolist() == expected
    if compiled is not None:
        assert compiled.quantize(x, 1.0).tolist() == expected


# --- parity: properties ------------------------------------------------------------------------

samples = st.one_of(st.floats(-5, 5), st.just(math.nan), st.floats(-1e300, 1e300),
                    st.sampled_from([0.0, 1.0, -1.0]))


@needs_compiled
@relaxed
@given(values=st.lists(samples, max_size=2500), fs=st.floats(125, 1000),
       step=st.floats(1e-6, 1e3))
def test_property_random_signals_give_identical_peaks(values, fs, step):
    x = arr(values)
    for function in ("qrs_detect", "pulse_detect"):
        got_compiled, got_reference = both(function, x, fs, step)
        assert got_compiled.tolist() == got_reference.tolist()


@needs_compiled
@relaxed
@given(seed=st.integers(0, 2**32 - 1), fs=st.floats(125, 1000), beats=st.integers(2, 14),
       rr_lo=st.floats(0.3, 1.2), rr_spread=st.floats(0.0, 0.8), noise=st.floats(0, 0.5),
       wander=st.floats(0, 2), scale=st.floats(1e-3, 1e4), nan_share=st.floats(0, 0.05))
def test_property_synthetic_ecg_gives_identical_peaks(seed, fs, beats, rr_lo, rr_spread, noise,
                                                      wander, scale, nan_share):
    rng = np.random.default_rng(seed)
    rr = rng.uniform(rr_lo, rr_lo + rr_spread, beats)
    x, _ = synthetic_ecg(fs, rr, noise=noise, wander=wander, scale=scale, seed=seed)
    x[rng.random(x.size) < nan_share] = math.nan
    step = waveform._step(x)
    got_compiled, got_reference = both("qrs_detect", x, fs, step)
    assert got_compiled.tolist() == got_reference.tolist()
    candidates_compiled, candidates_reference = both("qrs_candidates", x, fs, step)
    assert candidates_compiled.tolist() == candidates_reference.tolist()
    ppg, _ = synthetic_ppg(fs, rr)
    got_compiled, got_reference = both("pulse_detect", ppg * scale, fs, waveform._step(ppg))
    assert got_compiled.tolist() == got_reference.tolist()


@needs_compiled
@relaxed
@given(q=st.lists(st.integers(-reference.LIMIT, reference.LIMIT), min_size=1, max_size=3000),
       fs=st.floats(125, 1000))
def test_property_filter_stages_are_identical(q, fs):
    quantised = np.asarray(q, dtype=np.int64)
    (bp_c, mwi_c), (bp_r, mwi_r) = both("qrs_filter", quantised, fs)
    assert bp_c.tolist() == bp_r.tolist()
    assert mwi_c.tolist() == mwi_r.tolist()
    assert (mwi_r >= 0).all()


@needs_compiled
@relaxed
@given(rr=st.lists(st.floats(0.2, 2.5), min_size=0, max_size=400),
       window=st.integers(8, 130), step=st.integers(1, 40))
def test_property_rr_features_agree(rr, window, step):
    x = arr(rr)
    got_compiled, got_reference = both("rr_features", x, window, step)
    assert got_compiled.shape == got_reference.shape
    np.testing.assert_allclose(got_compiled, got_reference, rtol=1e-12, atol=1e-12)
    assert got_compiled[:, 2].tolist() == got_reference[:, 2].tolist()  # counts: exact


# --- QRS detection on MIT-BIH record 100 ----------------------------------------------------------


@pytest.fixture(scope="module")
def record100():
    if not (PHYSIONET / "100.hea").exists():
        pytest.skip(f"PhysioNet test records not found in {PHYSIONET}")
    record = read_record(PHYSIONET / "100")
    return record, read_annotations(PHYSIONET / "100").beats()


def resample(x: np.ndarray, fs: float, to: float) -> np.ndarray:
    """Linear interpolation of x (at fs) onto a grid at `to` Hz."""
    t = np.arange(int(x.size * to / fs)) / to
    return np.interp(t, np.arange(x.size) / fs, x)


@needs_data
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_record_100_sensitivity_and_positive_predictivity(record100, use, implementation):
    record, beats = record100
    use(implementation)
    peaks = dsp.detect_qrs(record.signals[:, 0], record.fs)
    score = score_beats(peaks, beats, record.fs)
    assert score.sensitivity >= 0.995, score
    assert score.positive_predictivity >= 0.995, score


@needs_data
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("fs", [125.0, 1000.0])
def test_record_100_resampled(record100, use, implementation, fs):
    record, beats = record100
    use(implementation)
    x = resample(record.signals[:, 0], record.fs, fs)
    peaks = dsp.detect_qrs(x, fs)
    score = score_beats(peaks, np.round(beats * fs / record.fs), fs)
    assert score.sensitivity >= 0.99, score
    assert score.positive_predictivity >= 0.99, score


@needs_data
@needs_compiled
def test_record_100_identical_between_implementations(record100):
    record, _ = record100
    for fs in (360.0, 125.0, 1000.0):
        x = record.signals[:, 0] if fs == 360.0 else resample(record.signals[:, 0], 360.0, fs)
        x = np.ascontiguousarray(x)
        got_compiled, got_reference = both("qrs_detect", x, fs, waveform._step(x))
        assert got_compiled.tolist() == got_reference.tolist()


@needs_data
def test_r_peaks_sit_on_the_annotated_r_waves(record100):
    record, beats = record100
    peaks = dsp.detect_qrs(record.signals[:, 0], record.fs)
    nearest = beats[np.clip(np.searchsorted(beats, peaks), 0, beats.size - 1)]
    offsets_ms = (peaks - nearest) / record.fs * 1000
    matched = np.abs(offsets_ms) < 150
    assert abs(np.median(offsets_ms[matched])) <= 6
    assert np.percentile(np.abs(offsets_ms[matched]), 95) <= 15


@needs_data
def test_heart_rate_and_rr_of_record_100(record100):
    record, beats = record100
    peaks = dsp.detect_qrs(record.signals[:, 0], record.fs)
    assert dsp.heart_rate(peaks, record.fs) == pytest.approx(
        dsp.heart_rate(beats, record.fs), rel=0.005)
    rr = dsp.rr_intervals(peaks, record.fs)
    assert rr.size == peaks.size - 1
    assert 0.3 < np.median(rr) < 1.2


@pytest.mark.parametrize("fs", [125.0, 250.0, 500.0, 1000.0])
def test_synthetic_beats_are_found_at_any_rate(fs):
    rng = np.random.default_rng(int(fs))
    rr = rng.uniform(0.45, 1.3, 60)
    x, beats = synthetic_ecg(fs, rr, noise=0.03, wander=0.5, seed=3)
    score = score_beats(dsp.detect_qrs(x, fs), beats, fs)
    assert score.sensitivity >= 0.98 and score.positive_predictivity >= 0.98, score
    inverted = score_beats(dsp.detect_qrs(-x * 1000, fs), beats, fs)  # unit and polarity
    assert inverted.sensitivity >= 0.98 and inverted.positive_predictivity >= 0.98, inverted


def test_a_flat_stretch_is_not_filled_with_beats():
    x, beats = synthetic_ecg(250.0, np.full(40, 0.8), noise=0.01)
    x[2500:5000] = x[2500]  # 10 s without activity
    peaks = dsp.detect_qrs(x, 250.0)
    assert not ((peaks > 2500 + 60) & (peaks < 5000 - 60)).any()
    assert score_beats(peaks, beats[(beats < 2480) | (beats > 5020)], 250.0).sensitivity > 0.95


# --- pulses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", [25.0, 125.0, 500.0])
def test_synthetic_pulses_are_found(fs):
    rr = np.random.default_rng(5).uniform(0.5, 1.2, 40)
    x, peaks = synthetic_ppg(fs, rr)
    score = score_beats(dsp.detect_pulses(x, fs), peaks, fs, window=0.1)
    assert score.sensitivity >= 0.97 and score.positive_predictivity >= 0.97, score


@needs_data
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pulse_rate_matches_heart_rate_on_a103l(use, implementation):
    use(implementation)
    record = read_record(PHYSIONET / "a103l")
    fs = record.fs
    last = slice(int(296 * fs), int(300 * fs))  # the ECG is clean in the last 4 s
    qrs = dsp.detect_qrs(record.signals[last, 0], fs)
    pulses = dsp.detect_pulses(record.signals[int(284 * fs): int(300 * fs), 2], fs)
    assert len(qrs) >= 6 and len(pulses) >= 25
    ecg_rate = 60 / np.median(np.diff(qrs) / fs)
    ppg_rate = 60 / np.median(np.diff(pulses) / fs)
    assert ppg_rate == pytest.approx(ecg_rate, rel=0.03)


# --- signal quality -------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("start", [0, 300, 600, 900, 1200, 1500])
def test_clean_record_100_segments_are_good_quality(record100, start):
    record, _ = record100
    fs = record.fs
    segment = record.signals[int(start * fs): int((start + 16) * fs), 0]
    sqi = dsp.signal_quality(segment, fs, "ecg", window=2.0)
    assert sqi.size == 8
    assert (sqi >= dsp.GOOD_QUALITY["ecg"]).all(), sqi


def test_noise_and_flat_lines_are_not_good_quality():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, 16 * 250)
    for kind in ("ecg", "ppg"):
        sqi = dsp.signal_quality(noise, 250.0, kind)
        assert ((sqi >= 0) & (sqi <= 1)).all()
        assert (sqi < dsp.GOOD_QUALITY[kind]).mean() >= 0.75, (kind, sqi)
        assert dsp.signal_quality(np.zeros(4000), 250.0, kind).tolist() == [0.0] * 8


def test_synthetic_clean_signals_are_good_quality():
    ecg, _ = synthetic_ecg(250.0, np.full(20, 0.8), noise=0.01)
    ppg, _ = synthetic_ppg(250.0, np.full(20, 0.8))
    assert (dsp.signal_quality(ecg, 250.0, "ecg") >= dsp.GOOD_QUALITY["ecg"]).all()
    assert (dsp.signal_quality(ppg, 250.0, "ppg") >= dsp.GOOD_QUALITY["ppg"]).all()


def test_quality_windows():
    x = np.zeros(int(250 * 8.5))  # 8.5 s: 2+2+2+2.5 (a last 0.5 s joins the one before)
    assert dsp.signal_quality(x, 250.0, window=2.0).size == 4
    assert dsp.signal_quality(x[:100], 250.0, window=2.0).size == 1
    assert dsp.signal_quality([], 250.0).size == 0


# --- the alarm gate -------------------------------------------------------------------------------

CHALLENGE_ALARMS = {"Asystole": "asystole", "Ventricular_Tachycardia": "ventricular_tachycardia",
                    "Bradycardia": "bradycardia", "Tachycardia": "tachycardia",
                    "Ventricular_Flutter_Fib": "ventricular_fibrillation"}


def last_seconds(name: str, seconds: float = 16.0):
    """Alarm type (from the header comments) and the ECG leads and PPG of the `seconds`
    before the alarm, which in Challenge 2015 records is at 5:00."""
    record = read_record(PHYSIONET / name)
    alarm = CHALLENGE_ALARMS[record.comments[0]]
    assert record.comments[1] == "False alarm"
    fs = record.fs
    window = slice(int((300 - seconds) * fs), int(300 * fs))
    leads = [i for i, c in enumerate(record.channels) if c in ("I", "II", "III", "V", "aVF")]
    return alarm, fs, record.signals[window][:, leads], record.signals[
        window, record.channels.index("PLETH")]


@needs_data
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name, verdict", [("v102s", "poor_quality"),
                                           ("a103l", "contradicted")])
def test_challenge_2015_false_alarms_are_not_credible(use, implementation, name, verdict):
    use(implementation)
    alarm, fs, ecg, ppg = last_seconds(name)
    assessment = dsp.assess_alarm(alarm, fs, ecg, ppg)
    assert not assessment.credible, assessment.reason
    assert assessment.verdict == verdict, assessment.reason


@needs_data
def test_a103l_asystole_is_contradicted_by_the_pulse():
    alarm, fs, ecg, ppg = last_seconds("a103l")
    assessment = dsp.assess_alarm(alarm, fs, ecg, ppg)
    assert assessment.reason.startswith("PPG")
    assert (assessment.ppg_quality >= dsp.GOOD_QUALITY["ppg"]).mean() >= 0.75
    assert 100 < assessment.pulse_rate < 150
    without_ppg = dsp.assess_alarm(alarm, fs, ecg)  # the ECG alone does not rule it out
    assert not without_ppg.reason.startswith("PPG")


@needs_data
def test_gate_inputs_two_leads_or_a_list_and_a_slower_ppg():
    alarm, fs, ecg, ppg = last_seconds("a103l")
    as_list = dsp.assess_alarm(alarm, fs, [ecg[:, 0], ecg[:, 1]], ppg[::2], ppg_fs=fs / 2)
    assert as_list.verdict == "contradicted" and as_list.reason.startswith("PPG")
    one_lead = dsp.assess_alarm(alarm, fs, ecg[:, 0], ppg)
    assert one_lead.ecg_quality.size == 8 and not one_lead.credible


def test_true_asystole_flat_ecg_and_flat_ppg_is_credible():
    flat = np.zeros(16 * 250)
    for alarm in dsp.ALARMS:
        assessment = dsp.assess_alarm(alarm, 250.0, flat, flat)
        assert assessment.credible, (alarm, assessment.reason)
    noisy = np.random.default_rng(2).normal(0, 0.005, flat.size)
    assert dsp.assess_alarm("asystole", 250.0, noisy, flat + 0.5).credible


def test_beats_that_stop_make_asystole_credible():
    ecg, _ = synthetic_ecg(250.0, np.full(25, 0.75), noise=0.01)
    ppg, _ = synthetic_ppg(250.0, np.full(25, 0.75))
    ecg, ppg = ecg[: 16 * 250].copy(), ppg[: 16 * 250].copy()
    ecg[int(9.5 * 250):] = 0.0   # the last 6.5 s: no beat, no pulse
    ppg[int(9.5 * 250):] = 0.0
    assert dsp.assess_alarm("asystole", 250.0, ecg, ppg).credible
    assert not dsp.assess_alarm("asystole", 250.0, ecg[: 9 * 250], ppg[: 9 * 250]).credible


@needs_data
def test_clean_sinus_rhythm_rules_out_every_alarm(record100):
    record, _ = record100
    segment = record.signals[int(600 * record.fs): int(616 * record.fs), 0]
    for alarm in dsp.ALARMS:
        assessment = dsp.assess_alarm(alarm, record.fs, segment)
        assert assessment.verdict == "contradicted", (alarm, assessment.reason)
        assert 60 < assessment.heart_rate < 90


def test_a_clean_fast_rhythm_keeps_tachycardia_alarms():
    ecg, _ = synthetic_ecg(250.0, np.full(45, 0.36), noise=0.01)  # 167 /min
    ecg = ecg[: 16 * 250]
    for alarm in ("ventricular_tachycardia", "tachycardia"):
        assessment = dsp.assess_alarm(alarm, 250.0, ecg)
        assert assessment.credible, (alarm, assessment.reason)
    assert dsp.assess_alarm("asystole", 250.0, ecg).verdict == "contradicted"


def test_artefact_with_a_pulseless_ppg_is_kept():
    rng = np.random.default_rng(4)
    artefact = rng.normal(0, 1.0, 16 * 250)
    assert dsp.assess_alarm("ventricular_tachycardia", 250.0, artefact).verdict == (
        "poor_quality")
    kept = dsp.assess_alarm("ventricular_tachycardia", 250.0, artefact, np.zeros(16 * 250))
    assert kept.credible and "no pulse" in kept.reason
    assert dsp.assess_alarm("ventricular_fibrillation", 250.0, artefact).credible


# --- AF screening -------------------------------------------------------------------------------


def sinus(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    return 0.85 + 0.04 * np.sin(2 * np.pi * i / 4.3) + rng.normal(0, 0.006, n)


def test_af_features_separate_af_from_sinus_rhythm():
    af = np.random.default_rng(0).uniform(0.35, 1.1, 1024)
    features = dsp.af_features(af, ectopy=False)
    assert features.start.tolist() == [0, 128, 256, 384, 512, 640, 768, 896]
    assert features.af_suspect.all()
    gated = dsp.af_features(af)  # AF stays AF with the ectopy gate
    assert len(gated.start) >= 5 and gated.af_suspect.all()
    assert (np.abs(features.tpr - 2 / 3) < 0.12).all()
    regular = dsp.af_features(sinus(1024))
    assert len(regular.start) == 8 and not regular.af_suspect.any()
    assert (regular.cv < 0.06).all() and (regular.nrmssd < 0.1).all()


def test_the_ectopy_gate_removes_premature_compensatory_pairs():
    rr = sinus(1024, seed=1)
    rr[7::8] *= 0.65     # a premature beat every 8th...
    rr[8::8] *= 1.35     # ...and its compensatory pause
    gated = dsp.af_features(rr)
    ungated = dsp.af_features(rr, ectopy=False)
    assert (ungated.nrmssd > 0.1).all()
    assert (gated.nrmssd < 0.06).all()
    assert (np.abs(gated.ectopic - 0.25) < 0.05).all()
    assert (ungated.ectopic == 0).all()
    af = dsp.af_features(np.random.default_rng(3).uniform(0.35, 1.1, 1024))
    assert af.af_suspect.all() and (af.ectopic < 0.25).all()


def test_af_features_sliding_windows():
    rr = sinus(300)
    features = dsp.af_features(rr, window=100, step=10, ectopy=False)
    assert features.start.tolist() == list(range(0, 201, 10))
    assert features.cv[0] == pytest.approx(np.std(rr[:100]) / np.mean(rr[:100]), rel=1e-12)
    d = np.diff(rr[:100])
    assert features.nrmssd[0] == pytest.approx(np.sqrt(np.mean(d * d)) / rr[:100].mean())
    assert dsp.af_features(rr[:50], window=128).cv.size == 0


def test_rr_features_by_hand():
    ramp = np.repeat(0.6 + 0.02 * np.arange(16), 8)  # 16 equally spaced values, 8 each
    features = dsp.af_features(ramp, ectopy=False)
    assert features.shannon.tolist() == [pytest.approx(1.0)]  # one value per bin
    assert features.tpr.tolist() == [0.0]  # never turns
    zigzag = np.tile([0.7, 0.9], 64)
    features = dsp.af_features(zigzag, ectopy=False)
    assert features.tpr.tolist() == [1.0] and features.shannon.tolist() == [
        pytest.approx(-2 * 0.5 * math.log(0.5) / math.log(16))]
    assert features.cv.tolist() == [pytest.approx(0.1 / 0.8)]
    assert features.nrmssd.tolist() == [pytest.approx(0.2 / 0.8)]
    constant = dsp.af_features(np.full(128, 0.8), ectopy=False)
    assert constant.shannon.tolist() == [0.0] and constant.cv.tolist() == [pytest.approx(0.0)]


@needs_data
def test_record_100_is_not_af(record100):
    record, _ = record100
    peaks = dsp.detect_qrs(record.signals[:, 0], record.fs)
    features = dsp.af_features(dsp.rr_intervals(peaks, record.fs))
    assert len(features.start) >= 15
    assert not features.af_suspect.any()


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: dsp.detect_qrs([[1.0, 2.0]], 360), "one-dimensional"),
    (lambda: dsp.detect_qrs(["a", "b"], 360), "x: must be numbers"),
    (lambda: dsp.detect_qrs([0.0, math.inf], 360), "sample 1 is inf"),
    (lambda: dsp.detect_qrs([0.0], 100), "125 to 1000 Hz"),
    (lambda: dsp.detect_qrs([0.0], 2000.0), "125 to 1000 Hz"),
    (lambda: dsp.detect_qrs([0.0], True), "fs: must be a finite number"),
    (lambda: dsp.detect_qrs([0.0], "360"), "fs: must be a finite number"),
    (lambda: dsp.detect_qrs([0.0], math.nan), "fs: must be a finite number"),
    (lambda: dsp.detect_pulses([0.0], 10), "25 to 1000 Hz"),
    (lambda: dsp.rr_intervals([5, 3], 360), "strictly increasing"),
    (lambda: dsp.rr_intervals([0.5, 1.5], 360), "integer sample indices"),
    (lambda: dsp.rr_intervals([1, 2], 0), "fs: must be a positive"),
    (lambda: dsp.af_features([0.8] * 200, window=4), "window: must be an integer"),
    (lambda: dsp.af_features([0.8] * 200, step=0), "step: must be a positive"),
    (lambda: dsp.af_features([0.8, -0.1] * 100), "positive seconds"),
    (lambda: dsp.af_features([0.8, math.nan] * 100), "positive seconds"),
    (lambda: dsp.signal_quality([0.0] * 10, 250, kind="abp"), "kind: must be one of"),
    (lambda: dsp.signal_quality([0.0] * 10, 250, window=0), "window: must be a positive"),
    (lambda: dsp.assess_alarm("afib", 250, [0.0] * 10), "alarm: must be one of"),
    (lambda: dsp.assess_alarm("asystole", 250, []), "at least one lead"),
    (lambda: dsp.assess_alarm("asystole", 250, [[0.0] * 10, [0.0] * 9]), "same length"),
])
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_results_are_sample_indices_into_the_input():
    x, beats = synthetic_ecg(360.0, np.full(10, 0.8))
    peaks = dsp.detect_qrs(list(x), 360)  # a list and an int rate are fine
    assert peaks.dtype == np.int64
    assert score_beats(peaks, beats, 360.0).sensitivity == 1.0
    assert dsp.heart_rate(peaks, 360) == pytest.approx(75.0, rel=0.01)
    assert math.isnan(dsp.heart_rate(peaks[:1], 360))


# --- command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    return build_cli()


@needs_data
def test_cli_qrs_json_scores_against_the_annotations(cli, record100):
    _, beats = record100
    result = CliRunner().invoke(cli, ["dsp", "qrs", str(PHYSIONET / "100"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"fs", "peaks"} and out["fs"] == 360.0
    score = score_beats(out["peaks"], beats, out["fs"])
    assert score.sensitivity >= 0.995 and score.positive_predictivity >= 0.995, score


@needs_data
def test_cli_qrs_summary_and_channel(cli):
    record = read_record(PHYSIONET / "100")
    annotated = read_annotations(PHYSIONET / "100").beats()
    result = CliRunner().invoke(cli, ["dsp", "qrs", str(PHYSIONET / "100")])
    assert result.exit_code == 0, result.output
    beats = int(result.output.split("100: ")[1].split(" beats")[0])
    assert beats == len(dsp.detect_qrs(record.signals[:, 0], record.fs))
    assert abs(beats - len(annotated)) <= 0.005 * len(annotated)
    assert "30 min 5.6 s (MLII, 360 Hz)" in result.output
    rate = float(result.output.split("mean heart rate: ")[1].split(" /min")[0])
    assert rate == pytest.approx(dsp.heart_rate(annotated, 360.0), abs=0.3)
    second = CliRunner().invoke(cli, ["dsp", "qrs", str(PHYSIONET / "100"), "--channel", "1",
                                      "--json"])
    assert second.exit_code == 0 and len(json.loads(second.output)["peaks"]) > 2200


def test_cli_qrs_bad_path_is_a_usage_error(cli, tmp_path):
    result = CliRunner().invoke(cli, ["dsp", "qrs", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "nothing.hea: cannot be read" in result.output
    help_text = CliRunner().invoke(cli, ["dsp", "qrs", "--help"]).output
    assert "Exit code 2" in help_text


def test_cli_qrs_bad_channel_and_rate(cli, tmp_path):
    x = (synthetic_ecg(100.0, np.full(5, 0.8))[0] * 200).astype("<i2")
    (tmp_path / "r.dat").write_bytes(x.tobytes())
    (tmp_path / "r.hea").write_text(f"r 1 100 {x.size}\nr.dat 16 200 16 0 0 0 0 ECG\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["dsp", "qrs", str(tmp_path / "r"), "--channel", "3"])
    assert result.exit_code == 2 and "channel 3 does not exist" in result.output
    result = runner.invoke(cli, ["dsp", "qrs", str(tmp_path / "r")])
    assert result.exit_code == 2 and "125 to 1000 Hz" in result.output
