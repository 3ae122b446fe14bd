"""QRS detection on the whole of MIT-BIH record 100 (30 min 6 s, channel 0 MLII, 360 Hz,
650,000 samples): telemon compiled and reference against neurokit2 and wfdb's XQRS, in the
same run (report the ratios, not absolute times). Each records its sensitivity and positive
predictivity against the record's beat annotations (150 ms window) in extra_info.

neurokit2: `ecg_clean` then `ecg_peaks` with the same method, for its fast methods
(pantompkins1985, kalidas2017, its default neurokit); the fastest counts. Peers are skipped
when not installed: pip install -e '.[bench]'.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from telemon.cext import waveform_reference
from telemon.dsp import waveform
from telemon.recordings import read_annotations, read_record, score_beats

GROUP = "QRS detection, MIT-BIH 100 channel 0 (650,000 samples)"
PHYSIONET = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet"


@pytest.fixture(scope="module")
def record100():
    if not (PHYSIONET / "100.hea").exists():
        pytest.skip(f"PhysioNet test records not found in {PHYSIONET}")
    record = read_record(PHYSIONET / "100")
    signal = np.ascontiguousarray(record.signals[:, 0])
    return signal, record.fs, read_annotations(PHYSIONET / "100").beats()


def accuracy(benchmark, peaks, record100) -> None:
    _, fs, beats = record100
    score = score_beats(peaks, beats, fs)
    benchmark.extra_info["sensitivity"] = round(score.sensitivity, 5)
    benchmark.extra_info["positive_predictivity"] = round(score.positive_predictivity, 5)
    benchmark.extra_info["beats"] = len(peaks)


@pytest.mark.benchmark(group=GROUP)
def test_telemon_compiled(benchmark, record100, monkeypatch):
    compiled = pytest.importorskip("telemon.cext._waveform", reason="compiled kernels not built")
    monkeypatch.setattr(waveform, "_k", compiled)
    x, fs, _ = record100
    peaks = benchmark(waveform.detect_qrs, x, fs)
    accuracy(benchmark, peaks, record100)
    assert benchmark.extra_info["sensitivity"] >= 0.995
    assert benchmark.extra_info["positive_predictivity"] >= 0.995


@pytest.mark.benchmark(group=GROUP)
def test_telemon_reference(benchmark, record100, monkeypatch):
    monkeypatch.setattr(waveform, "_k", waveform_reference)
    x, fs, _ = record100
    peaks = benchmark.pedantic(waveform.detect_qrs, args=(x, fs), rounds=10)
    accuracy(benchmark, peaks, record100)
    assert benchmark.extra_info["sensitivity"] >= 0.995


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("method", ["pantompkins1985", "kalidas2017", "neurokit"])
def test_neurokit2(benchmark, record100, method):
    nk = pytest.importorskip("neurokit2")
    x, fs, _ = record100

    def detect():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean = nk.ecg_clean(x, sampling_rate=int(fs), method=method)
            return nk.ecg_peaks(clean, sampling_rate=int(fs), method=method)[1]["ECG_R_Peaks"]

    peaks = benchmark.pedantic(detect, rounds=15)
    accuracy(benchmark, np.asarray(peaks), record100)


@pytest.mark.benchmark(group=GROUP)
def test_wfdb_xqrs(benchmark, record100):
    processing = pytest.importorskip("wfdb.processing")
    x, fs, _ = record100
    peaks = benchmark.pedantic(processing.xqrs_detect, args=(x,),
                               kwargs={"fs": fs, "verbose": False}, rounds=2)
    accuracy(benchmark, np.asarray(peaks), record100)
